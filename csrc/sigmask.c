/*
 * The program's view of its own signal mask, for SIGSEGV and SIGBUS.
 *
 * A fault the thread has blocked kills it: the kernel forces the default
 * action.  So SIGSEGV and SIGBUS are never blocked for real while we are
 * installed; the mask calls are interposed too, and what the program blocked
 * is kept per thread as its view, which decides what a non-pool fault does.
 * Whatever else sets a mask (longjmp, a new thread, the masks of sigsuspend
 * and the p-variants of poll, select and epoll_wait) goes through here too.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kf_internal.h"

/* glibc's own functions, found once at start-up (dlsym is no handler's business). */
static int (*kf_libc_pthread_sigmask)(int, const sigset_t *, sigset_t *);
static int (*kf_libc_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static void (*kf_libc_siglongjmp)(struct __jmp_buf_tag *, int) __attribute__((noreturn));
static void (*kf_libc_longjmp_chk)(struct __jmp_buf_tag *, int) __attribute__((noreturn));
static int (*kf_libc_sigsuspend)(const sigset_t *);
static int (*kf_libc_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
static int (*kf_libc_pselect)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
			      const sigset_t *);
static int (*kf_libc_epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);

/*
 * The program's view of its own mask for SIGSEGV and SIGBUS, per thread
 * (bit 0 SIGSEGV, bit 1 SIGBUS).  While our handler is installed they are
 * never blocked for real: the kernel forces the default action on a fault
 * that is blocked, which would kill a thread with a pool bug unreported.
 * Sent ones that arrive while the view blocks them wait in kf_pending.
 */
static KF_TLS unsigned kf_view, kf_pending;

bool kf_sigmask_resolve(void)
{
	*(void **)&kf_libc_pthread_sigmask = kf_libc_sym("pthread_sigmask");
	*(void **)&kf_libc_pthread_create = kf_libc_sym("pthread_create");
	*(void **)&kf_libc_siglongjmp = kf_libc_sym("siglongjmp");
	*(void **)&kf_libc_longjmp_chk = kf_libc_sym("__longjmp_chk");
	/* A handler may call these (sigsuspend, ppoll, pselect are async-signal-safe). */
	*(void **)&kf_libc_sigsuspend = kf_libc_sym("sigsuspend");
	*(void **)&kf_libc_ppoll = kf_libc_sym("ppoll");
	*(void **)&kf_libc_pselect = kf_libc_sym("pselect");
	*(void **)&kf_libc_epoll_pwait = kf_libc_sym("epoll_pwait");
	return kf_libc_pthread_sigmask && kf_libc_pthread_create && kf_libc_siglongjmp;
}

/* Before the program's constructors: they may block signals or jump already. */
__attribute__((constructor)) static void kf_sigmask_constructor(void)
{
	if (!kf_libc_pthread_sigmask)
		kf_sigmask_resolve();
}

/* === The view === */

/* Set this thread's view; sent signals it no longer blocks are delivered now. */
KF_SIGSAFE void kf_view_set(unsigned view)
{
	kf_view = view;
	unsigned ready = kf_pending & ~view;
	if (!ready)
		return;
	kf_pending &= ~ready;
	if (ready & 1)
		raise(SIGSEGV);
	if (ready & 2)
		raise(SIGBUS);
}

KF_SIGSAFE bool kf_view_blocks(int sig)
{
	return kf_view & (1u << kf_sig_index(sig));
}

KF_SIGSAFE void kf_view_hold(int sig)
{
	kf_pending |= 1u << kf_sig_index(sig);
}

KF_SIGSAFE static int kf_real_mask(int how, const sigset_t *set, sigset_t *old)
{
	if (KF_LIKELY(kf_libc_pthread_sigmask != NULL))
		return kf_libc_pthread_sigmask(how, set, old);
	/* Not found (cannot happen with glibc): the system call, rather than a crash. */
	return syscall(SYS_rt_sigprocmask, how, set, old, _NSIG / 8) ? errno : 0;
}

KF_SIGSAFE unsigned kf_view_enter(const sigset_t *mask)
{
	sigset_t m = *mask;
	unsigned view = kf_view;
	kf_view = view | kf_bits_of(&m);
	kf_strip(&m);
	kf_real_mask(SIG_SETMASK, &m, NULL);
	return view;
}

/*
 * pthread_sigmask() as the program sees it: SIGSEGV and SIGBUS go to the
 * view, never to the kernel (and are unblocked there if a thread had them
 * blocked before we took over); everything else to glibc's own, which also
 * keeps its internal signals out of the set.
 */
KF_SIGSAFE int kf_mask(int how, const sigset_t *set, sigset_t *old)
{
	/* A vfork child's thread shares its parent's view: its mask is the kernel's alone. */
	if (!atomic_load_explicit(&kf_installed, memory_order_relaxed) || kf_vfork_child())
		return kf_real_mask(how, set, old);
	sigset_t s, prev;
	unsigned bits = 0;
	if (set) {
		s = *set;  /* set may be old as well */
		bits = kf_bits_of(&s);
		kf_strip(&s);
		if (how == SIG_UNBLOCK) {
			sigaddset(&s, SIGSEGV);
			sigaddset(&s, SIGBUS);
		}
	}
	int rc = kf_real_mask(how, set ? &s : NULL, &prev);
	if (rc)
		return rc;
	unsigned real = kf_bits_of(&prev), view = kf_view | real;
	if (real && (!set || how == SIG_BLOCK)) {
		sigemptyset(&s);
		sigaddset(&s, SIGSEGV);
		sigaddset(&s, SIGBUS);
		kf_real_mask(SIG_UNBLOCK, &s, NULL);
	}
	if (old) {
		kf_strip(&prev);
		if (view & 1)
			sigaddset(&prev, SIGSEGV);
		if (view & 2)
			sigaddset(&prev, SIGBUS);
		*old = prev;
	}
	if (set)
		view = how == SIG_BLOCK ? view | bits : how == SIG_UNBLOCK ? view & ~bits : bits;
	kf_view_set(view);
	return 0;
}

/* === Interposed mask functions === */

KF_SIGSAFE int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
	return kf_mask(how, set, old);
}

KF_SIGSAFE int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
	int rc = kf_mask(how, set, old);
	if (rc) {
		errno = rc;
		return -1;
	}
	return 0;
}

/* The BSD calls: glibc's reach the kernel without passing through sigprocmask(). */
static int kf_bsd_mask(int how, int mask)
{
	sigset_t set, old;
	sigemptyset(&set);
	for (int sig = 1; sig <= 32; sig++)
		if (mask & (int)(1u << (sig - 1)))
			sigaddset(&set, sig);
	if (kf_mask(how, &set, &old))
		return -1;
	int prev = 0;
	for (int sig = 1; sig <= 32; sig++)
		if (sigismember(&old, sig) == 1)
			prev |= (int)(1u << (sig - 1));
	return prev;
}

int sigblock(int mask)
{
	return kf_bsd_mask(SIG_BLOCK, mask);
}

int sigsetmask(int mask)
{
	return kf_bsd_mask(SIG_SETMASK, mask);
}

int siggetmask(void);
int siggetmask(void)
{
	return kf_bsd_mask(SIG_BLOCK, 0);
}

/* sighold/sigrelse: SIGSEGV and SIGBUS through the view, the rest to glibc's own. */
static int kf_sysv_mask(const char *name, int how, int sig)
{
	if (kf_sig_index(sig) < 0)
		return kf_libc_sysv_call(name, sig);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	return sigprocmask(how, &set, NULL);
}

int sighold(int sig)
{
	return kf_sysv_mask("sighold", SIG_BLOCK, sig);
}

int sigrelse(int sig)
{
	return kf_sysv_mask("sigrelse", SIG_UNBLOCK, sig);
}

/* === longjmp and new threads === */

/*
 * siglongjmp() to a sigsetjmp(env, 1) puts back the saved mask with glibc's
 * internal call: the view follows it.  (The saved mask is the kernel's, in
 * which SIGSEGV and SIGBUS are never blocked while we are installed.)
 * A longjmp that keeps the mask keeps the view, as the kernel would.
 */
KF_SIGSAFE static void kf_longjmp_view(struct __jmp_buf_tag *env)
{
	if (env->__mask_was_saved && atomic_load_explicit(&kf_installed, memory_order_relaxed))
		kf_view_set(kf_bits_of(&env->__saved_mask));
}

KF_SIGSAFE void siglongjmp(sigjmp_buf env, int val)
{
	kf_longjmp_view(env);
	kf_libc_siglongjmp(env, val);
}

void longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp"), copy(siglongjmp)));
void _longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp"), copy(siglongjmp)));

/* What _FORTIFY_SOURCE turns longjmp() into. */
void __longjmp_chk(sigjmp_buf env, int val) __attribute__((noreturn));
KF_SIGSAFE void __longjmp_chk(sigjmp_buf env, int val)
{
	kf_longjmp_view(env);
	if (kf_libc_longjmp_chk)
		kf_libc_longjmp_chk(env, val);
	kf_libc_siglongjmp(env, val);
}

/* A new thread inherits its creator's mask, and so its view. */
struct kf_start {
	void *(*fn)(void *);
	void *arg;
	unsigned view;
};

static void *kf_thread_start(void *p)
{
	struct kf_start s = *(struct kf_start *)p;
	free(p);
	kf_view = s.view;
	return s.fn(s.arg);
}

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	if (!kf_libc_pthread_create)
		kf_sigmask_resolve();
	if (!kf_libc_pthread_create)
		return EAGAIN;
	struct kf_start *s;
	/* Nothing to carry (the usual case): glibc's own, untouched. */
	if (!kf_view || !atomic_load_explicit(&kf_installed, memory_order_relaxed) ||
	    !(s = malloc(sizeof(*s))))
		return kf_libc_pthread_create(t, attr, fn, arg);
	*s = (struct kf_start){ fn, arg, kf_view };
	int rc = kf_libc_pthread_create(t, attr, kf_thread_start, s);
	if (rc)
		free(s);
	return rc;
}

/*
 * Masks that hold only while the call waits (sigsuspend and the p-variants
 * of poll, select and epoll_wait): the handlers that run meanwhile must not
 * have SIGSEGV or SIGBUS blocked for real either.
 */
static const sigset_t *kf_wait_mask(const sigset_t *mask, sigset_t *copy)
{
	if (!mask || !atomic_load_explicit(&kf_installed, memory_order_relaxed) ||
	    !kf_bits_of(mask))
		return mask;
	*copy = *mask;
	kf_strip(copy);
	return copy;
}

/*
 * glibc's fn, found by the constructor (a call from a signal handler must
 * not dlsym); a call from an earlier constructor looks it up now.
 */
#define KF_WAIT_CALL(fn, ...) \
	((fn || (kf_sigmask_resolve(), fn)) ? fn(__VA_ARGS__) : (errno = ENOSYS, -1))

int sigsuspend(const sigset_t *mask)
{
	sigset_t copy;
	return KF_WAIT_CALL(kf_libc_sigsuspend, kf_wait_mask(mask, &copy));
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask)
{
	sigset_t copy;
	return KF_WAIT_CALL(kf_libc_ppoll, fds, n, t, kf_wait_mask(mask, &copy));
}

int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t,
	    const sigset_t *mask)
{
	sigset_t copy;
	return KF_WAIT_CALL(kf_libc_pselect, n, r, w, e, t, kf_wait_mask(mask, &copy));
}

int epoll_pwait(int fd, struct epoll_event *ev, int max, int timeout, const sigset_t *mask)
{
	sigset_t copy;
	return KF_WAIT_CALL(kf_libc_epoll_pwait, fd, ev, max, timeout, kf_wait_mask(mask, &copy));
}
