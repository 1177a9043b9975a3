/*
 * The program's own SIGSEGV and SIGBUS actions, and chaining to them.
 *
 * Programs install their own SIGSEGV handlers, and some (Python's
 * faulthandler) restore the previous one and re-raise.  Like the JVM's
 * libjsig, we interpose sigaction() and signal(): while our handler is
 * installed, the program's handler is only recorded and chained to, so ours
 * stays first in the kernel and pool faults are never lost.  The chained
 * handler runs with the mask and flags the kernel would have given it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>

#include "kf_internal.h"

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

/* glibc's own, for the other signals (found once at start-up). */
static __sighandler_t (*kf_libc_signal)(int, __sighandler_t);
static __sighandler_t (*kf_libc_sysv_signal)(int, __sighandler_t);

/*
 * What the program believes is installed for SIGSEGV (0) and SIGBUS (1),
 * under a sequence lock: sigaction() may run on any thread, and inside a
 * handler, so readers never block and retry a copy a write overlapped.
 * Writers take the odd count with a CAS, one at a time, with every signal
 * blocked: no handler can interrupt a write on its own thread and wait for
 * it.  Words are copied with relaxed atomics so that a torn copy is only
 * ever discarded, never undefined.
 */
union kf_action {
	struct sigaction sa;
	unsigned long w[sizeof(struct sigaction) / sizeof(unsigned long)];
};
_Static_assert(sizeof(struct sigaction) % sizeof(unsigned long) == 0, "sigaction in words");
static union kf_action kf_app_action[2];
static _Atomic unsigned kf_app_seq;
_Atomic bool kf_installed;

KF_SIGSAFE static void kf_app_lock(sigset_t *saved)
{
	kf_os_block_signals(saved);
	for (int tries = 0;; tries++) {
		unsigned s = atomic_load_explicit(&kf_app_seq, memory_order_relaxed);
		/* Odd for that long, the writer is gone (a fork without atfork): take over. */
		if ((!(s & 1) || tries > 1000000) &&
		    atomic_compare_exchange_weak_explicit(&kf_app_seq, &s, s | 1, memory_order_acquire,
							  memory_order_relaxed))
			break;
		sched_yield();  /* another thread is writing, signals blocked: it ends soon */
	}
	atomic_thread_fence(memory_order_release);
}

KF_SIGSAFE static void kf_app_unlock(const sigset_t *saved)
{
	atomic_store_explicit(&kf_app_seq, (atomic_load_explicit(&kf_app_seq, memory_order_relaxed) | 1) + 1,
			      memory_order_release);
	kf_os_restore_signals(saved);
}

/* Under kf_app_lock. */
KF_SIGSAFE static void kf_app_store(int i, const struct sigaction *act)
{
	union kf_action u = { .sa = *act };
	for (size_t k = 0; k < sizeof(u.w) / sizeof(u.w[0]); k++)
		__atomic_store_n(&kf_app_action[i].w[k], u.w[k], __ATOMIC_RELAXED);
}

KF_SIGSAFE static void kf_app_copy(int i, union kf_action *u)
{
	for (size_t k = 0; k < sizeof(u->w) / sizeof(u->w[0]); k++)
		u->w[k] = __atomic_load_n(&kf_app_action[i].w[k], __ATOMIC_RELAXED);
}

/* A consistent copy of the program's action; never waits for long. */
KF_SIGSAFE static void kf_app_read(int i, struct sigaction *out)
{
	union kf_action u;
	for (int tries = 0;; tries++) {
		unsigned s = atomic_load_explicit(&kf_app_seq, memory_order_acquire);
		/* A writer stopped with the count odd (fork) must not hang us: use what is there. */
		if (!(s & 1) || tries > 100000) {
			kf_app_copy(i, &u);
			atomic_thread_fence(memory_order_acquire);
			if (atomic_load_explicit(&kf_app_seq, memory_order_relaxed) == s || tries > 100000)
				break;
		}
		sched_yield();
	}
	*out = u.sa;
}

/* The writer that held the lock at fork() does not exist in the child. */
static void kf_app_atfork_child(void)
{
	unsigned s = atomic_load(&kf_app_seq);
	if (s & 1)
		atomic_store(&kf_app_seq, s + 1);
}

/*
 * The default action of sig, with its core dump: put SIG_DFL in the kernel
 * and return from the handler.  A fault re-executes and kills; a sent signal
 * is still blocked here and is delivered as we return.
 */
KF_SIGSAFE void kf_default_action(int sig, const siginfo_t *si)
{
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	__sigaction(sig, &dfl, NULL);
	atomic_store(&kf_installed, false);
	if (si->si_code <= 0)
		raise(sig);
}

/* === Chaining === */

/* The program's action for sig, reset to SIG_DFL under the lock if SA_RESETHAND asks. */
KF_SIGSAFE static void kf_app_take(int i, struct sigaction *app)
{
	kf_app_read(i, app);
	if (!(app->sa_flags & SA_RESETHAND) || app->sa_handler == SIG_DFL ||
	    app->sa_handler == SIG_IGN)
		return;
	/* Read again under the lock: of two threads faulting at once only one gets the handler. */
	union kf_action u;
	sigset_t saved;
	kf_app_lock(&saved);
	kf_app_copy(i, &u);
	*app = u.sa;
	if ((app->sa_flags & SA_RESETHAND) && app->sa_handler != SIG_DFL &&
	    app->sa_handler != SIG_IGN) {
		u.sa.sa_handler = SIG_DFL;  /* what the kernel does: flags and mask stay */
		kf_app_store(i, &u.sa);
	}
	kf_app_unlock(&saved);
}

KF_SIGSAFE void kf_chain(int sig, siginfo_t *si, ucontext_t *uc)
{
	struct sigaction app;
	kf_app_take(kf_sig_index(sig), &app);
	void (*h)(int) = app.sa_handler;
	if (h == SIG_IGN && si->si_code <= 0)
		return;  /* sent, and ignored: nothing happens */
	if (h == SIG_DFL || h == SIG_IGN) {
		kf_default_action(sig, si);
		return;
	}
	/*
	 * Enter the program's handler with the mask the kernel would have given
	 * it: the interrupted one, its sa_mask, and sig unless SA_NODEFER.  The
	 * kernel gave us ours; a handler that leaves with longjmp would keep it.
	 */
	sigset_t m = uc->uc_sigmask;
	sigorset(&m, &m, &app.sa_mask);
	if (!(app.sa_flags & SA_NODEFER))
		sigaddset(&m, sig);
	unsigned view = kf_view_enter(&m);
	if (app.sa_flags & SA_SIGINFO)
		app.sa_sigaction(sig, si, uc);
	else
		app.sa_handler(sig);
	/* Returning restores the interrupted mask (sigreturn), and the view with it. */
	kf_view_set(view);
}

/* === Installing ours === */

void kf_sigchain_resolve(void)
{
	kf_libc_sysv_signal = (__sighandler_t (*)(int, __sighandler_t))kf_libc_sym("sysv_signal");
	kf_libc_signal = (__sighandler_t (*)(int, __sighandler_t))kf_libc_sym("signal");
}

/* Before the program's constructors: they may install handlers already. */
__attribute__((constructor)) static void kf_sigchain_constructor(void)
{
	if (!kf_libc_signal)
		kf_sigchain_resolve();
	pthread_atfork(NULL, NULL, kf_app_atfork_child);
}

int kf_sigchain_install(void (*handler)(int, siginfo_t *, void *))
{
	static const int sigs[2] = { SIGSEGV, SIGBUS };
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	/* SA_ONSTACK: on a thread that has an alternate stack (Go, overflows), use it. */
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	/* Under the lock: a sigaction() of another thread goes either before, to the kernel, or after, to us. */
	sigset_t saved;
	kf_app_lock(&saved);
	int rc = 0;
	for (int i = 0; i < 2 && rc == 0; i++) {
		rc = __sigaction(sigs[i], &sa, &old);
		if (rc == 0)
			kf_app_store(i, &old);
	}
	if (rc == 0)
		atomic_store(&kf_installed, true);
	kf_app_unlock(&saved);
	return rc != 0 ? -1 : 0;
}

/* === Interposed sigaction and signal === */

KF_SIGSAFE int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	int i = kf_sig_index(sig);
	if (i < 0) {
		/*
		 * Nor do other handlers block them (sigfillset() masks are common):
		 * a pool bug in a SIGTERM handler would be a silent death.
		 */
		if (!act || !atomic_load_explicit(&kf_installed, memory_order_relaxed) ||
		    !kf_bits_of(&act->sa_mask))
			return __sigaction(sig, act, old);
		struct sigaction stripped = *act;
		kf_strip(&stripped.sa_mask);
		return __sigaction(sig, &stripped, old);
	}
	/* Copies in and out outside the lock: a bad pointer faults there, not with all blocked. */
	struct sigaction in;
	union kf_action prev;
	if (act)
		in = *act;
	if (atomic_load(&kf_installed) && kf_vfork_child()) {
		/*
		 * The kernel gave a vfork child a table of its own, but the record
		 * is its parent's (CPython's subprocess resets SIGSEGV before
		 * exec): the child's change goes to its kernel table only.
		 */
		kf_app_read(i, &prev.sa);
		if (act && __sigaction(sig, &in, NULL) != 0)
			return -1;
		if (old)
			*old = prev.sa;
		return 0;
	}
	sigset_t saved;
	kf_app_lock(&saved);
	int rc = 0;
	if (!atomic_load(&kf_installed)) {
		rc = __sigaction(sig, act ? &in : NULL, &prev.sa);
	} else {
		kf_app_copy(i, &prev);
		if (act)
			kf_app_store(i, &in);
	}
	kf_app_unlock(&saved);
	if (rc == 0 && old)
		*old = prev.sa;
	return rc;
}

/*
 * SIGSEGV and SIGBUS through sigaction() with flags; every other signal to
 * glibc's own (*libc), which also knows what siginterrupt() asked for.
 */
static __sighandler_t kf_signal(__sighandler_t (*const *libc)(int, __sighandler_t), int sig,
				__sighandler_t handler, int flags)
{
	if (kf_sig_index(sig) < 0) {
		if (!*libc)
			kf_sigchain_resolve();
		if (*libc)
			return (*libc)(sig, handler);
	}
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (!(flags & SA_NODEFER))
		sigaddset(&sa.sa_mask, sig);
	if (handler == SIG_ERR || sig <= 0 || sig >= NSIG || sigaction(sig, &sa, &old) != 0) {
		errno = EINVAL;
		return SIG_ERR;
	}
	return old.sa_handler;
}

/*
 * SIGSEGV and SIGBUS get BSD semantics, as glibc's signal() gives them
 * (restartable, the signal blocked in its handler).
 */
__sighandler_t signal(int sig, __sighandler_t handler)
{
	return kf_signal(&kf_libc_signal, sig, handler, SA_RESTART);
}

__sighandler_t bsd_signal(int sig, __sighandler_t handler) __attribute__((alias("signal"), copy(signal)));

__sighandler_t sysv_signal(int sig, __sighandler_t handler)
{
	return kf_signal(&kf_libc_sysv_signal, sig, handler, SA_RESETHAND | SA_NODEFER);
}

/* === The System V action calls, for SIGSEGV and SIGBUS: glibc's would bypass us === */

int sigignore(int sig)
{
	if (kf_sig_index(sig) < 0)
		return kf_libc_sysv_call("sigignore", sig);
	return signal(sig, SIG_IGN) == SIG_ERR ? -1 : 0;
}

__sighandler_t sigset(int sig, __sighandler_t disp)
{
	if (kf_sig_index(sig) < 0) {
		__sighandler_t (*libc)(int, __sighandler_t) =
			(__sighandler_t (*)(int, __sighandler_t))dlsym(RTLD_NEXT, "sigset");
		return libc ? libc(sig, disp) : SIG_ERR;
	}
	/* SIG_HOLD blocks and keeps the action; anything else installs it and unblocks. */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, sig);
	struct sigaction prev;
	if (sigaction(sig, NULL, &prev) != 0 ||
	    sigprocmask(disp == SIG_HOLD ? SIG_BLOCK : SIG_UNBLOCK, &set, &old) != 0)
		return SIG_ERR;
	if (disp != SIG_HOLD) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = disp;
		sigemptyset(&sa.sa_mask);
		if (sigaction(sig, &sa, NULL) != 0)
			return SIG_ERR;
	}
	return sigismember(&old, sig) == 1 ? SIG_HOLD : prev.sa_handler;
}
