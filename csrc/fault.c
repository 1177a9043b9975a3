/*
 * The fault path: a SIGSEGV/SIGBUS handler that claims kernel-raised faults
 * inside the pool, reports them and recovers; every other fault goes to the
 * handler the program installed, or gets the default action (a core dump).
 *
 * Programs install their own SIGSEGV handlers, and some (Python's
 * faulthandler) restore the previous one and re-raise.  Like the JVM's
 * libjsig, we interpose sigaction() and signal(): while our handler is
 * installed, the program's handler is only recorded and chained to, so ours
 * stays first in the kernel and pool faults are never lost.  The chained
 * handler runs with the mask and flags the kernel would have given it.
 *
 * A fault the thread has blocked kills it: the kernel forces the default
 * action.  So SIGSEGV and SIGBUS are never blocked for real while we are
 * installed; the mask calls are interposed too, and what the program blocked
 * is kept per thread as its view, which decides what a non-pool fault does.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <gnu/lib-names.h>
#include <execinfo.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "kf_internal.h"

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

/* glibc's own functions, found once at start-up (dlsym is no handler's business). */
static __sighandler_t (*kf_libc_signal)(int, __sighandler_t);
static __sighandler_t (*kf_libc_sysv_signal)(int, __sighandler_t);
static int (*kf_libc_pthread_sigmask)(int, const sigset_t *, sigset_t *);
static int (*kf_libc_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static void (*kf_libc_siglongjmp)(struct __jmp_buf_tag *, int) __attribute__((noreturn));
static void (*kf_libc_longjmp_chk)(struct __jmp_buf_tag *, int) __attribute__((noreturn));

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
static _Atomic bool kf_installed;

/*
 * The program's view of its own mask for SIGSEGV and SIGBUS, per thread
 * (bit 0 SIGSEGV, bit 1 SIGBUS).  While our handler is installed they are
 * never blocked for real: the kernel forces the default action on a fault
 * that is blocked, which would kill a thread with a pool bug unreported.
 * Sent ones that arrive while the view blocks them wait in kf_pending.
 */
static KF_TLS unsigned kf_view, kf_pending;

static int kf_sig_index(int sig)
{
	return sig == SIGSEGV ? 0 : sig == SIGBUS ? 1 : -1;
}

/* The view bits of a mask. */
static unsigned kf_bits_of(const sigset_t *set)
{
	return (sigismember(set, SIGSEGV) == 1) | (sigismember(set, SIGBUS) == 1) << 1;
}

static void kf_strip(sigset_t *set)
{
	sigdelset(set, SIGSEGV);
	sigdelset(set, SIGBUS);
}

static void kf_app_lock(sigset_t *saved)
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

static void kf_app_unlock(const sigset_t *saved)
{
	atomic_store_explicit(&kf_app_seq, (atomic_load_explicit(&kf_app_seq, memory_order_relaxed) | 1) + 1,
			      memory_order_release);
	kf_os_restore_signals(saved);
}

/* Under kf_app_lock. */
static void kf_app_store(int i, const struct sigaction *act)
{
	union kf_action u = { .sa = *act };
	for (size_t k = 0; k < sizeof(u.w) / sizeof(u.w[0]); k++)
		__atomic_store_n(&kf_app_action[i].w[k], u.w[k], __ATOMIC_RELAXED);
}

static void kf_app_copy(int i, union kf_action *u)
{
	for (size_t k = 0; k < sizeof(u->w) / sizeof(u->w[0]); k++)
		u->w[k] = __atomic_load_n(&kf_app_action[i].w[k], __ATOMIC_RELAXED);
}

/* A consistent copy of the program's action; never waits for long. */
static void kf_app_read(int i, struct sigaction *out)
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

/* === Classification === */

static int kf_fault_access(const ucontext_t *uc)
{
#if defined(__x86_64__)
	/* Page-fault error code: bit 1 set for a write. */
	return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? KFENCE_ACCESS_WRITE : KFENCE_ACCESS_READ;
#else
	(void)uc;
	return KFENCE_ACCESS_READ;
#endif
}

static uintptr_t kf_fault_pc(const ucontext_t *uc)
{
#if defined(__x86_64__)
	return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
	return (uintptr_t)uc->uc_mcontext.pc;
#else
	(void)uc;
	return 0;
#endif
}

/* The faulting instruction first, then its callers (the unwinder crosses the signal frame). */
static void kf_fault_stack(uintptr_t pc, struct kfence_stack *st)
{
	if (!kf_unwind_safe(pc)) {
		/* A fault inside the unwinder, which may hold its lock: the pc alone. */
		st->pc[0] = pc;
		st->depth = 1;
		return;
	}
	void *pcs[KFENCE_STACK_MAX + 16];
	int n = backtrace(pcs, (int)kf_opt.stack_depth + 16);
	int i = 0;
	while (i < n && (uintptr_t)pcs[i] != pc)
		i++;
	uint32_t depth = 0;
	if (i == n) {
		/* Not found: our frames, then the signal trampoline, then the rest. */
		for (i = 0; i < n && kf_in_self((uintptr_t)pcs[i]); i++)
			;
		i++;
		st->pc[depth++] = pc;
	}
	for (; i < n && depth < kf_opt.stack_depth; i++)
		st->pc[depth++] = (uintptr_t)pcs[i];
	st->depth = depth;
}

/*
 * The default action of sig, with its core dump: put SIG_DFL in the kernel
 * and return from the handler.  A fault re-executes and kills; a sent signal
 * is still blocked here and is delivered as we return.
 */
static void kf_default_action(int sig, const siginfo_t *si)
{
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	__sigaction(sig, &dfl, NULL);
	atomic_store(&kf_installed, false);
	if (si->si_code <= 0)
		raise(sig);
}

/* Let the faulting access complete; if the page cannot be opened, give up. */
static void kf_recover(int sig, const siginfo_t *si, uintptr_t page)
{
	if (kf_os_protect(page, kf_page, true) == 0)
		return;
	/* Returning would fault again forever: stop the way the fault would have. */
	kf_warn("cannot reopen the faulting pool page; taking the default action", NULL);
	kf_default_action(sig, si);
}

/*
 * How long a fault waits for a slot another thread is allocating or freeing
 * (BUSY) to settle.  Bounded: the owner may be the very thread we
 * interrupted, in which case it never settles while we wait.
 */
#define KF_SETTLE_NS 100000000ull

static uint64_t kf_load64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/*
 * A consistent copy of a slot's metadata once it is not BUSY; returns the
 * state copied, or BUSY if the slot did not settle in time (copy then holds
 * garbage), or UNUSED (copy untouched).  *deadline (0: not set yet) bounds
 * the wait of all the calls for one fault together.  Allocation and
 * free rewrite the metadata under BUSY, then publish with release order;
 * each stamps alloc_ns or free_ns anew, so the same state and stamps after
 * the copy as before it mean nothing was rewritten in between.
 */
static uint32_t kf_slot_settle(long slot, struct kfence_slot *copy, uint64_t *deadline)
{
	const struct kfence_slot *m = kf_slot_meta(slot);
	if (!m)
		return KFENCE_SLOT_UNUSED;  /* never used: no metadata to read */
	for (int spins = 0;;) {
		uint32_t s = atomic_load_explicit((_Atomic uint32_t *)&m->state, memory_order_acquire);
		if (s == KFENCE_SLOT_UNUSED)
			return s;
		if (s != KFENCE_SLOT_BUSY) {
			uint64_t an = kf_load64(&m->alloc_ns), fn = kf_load64(&m->free_ns);
			memcpy(copy, (const void *)m, sizeof(*copy));
			atomic_thread_fence(memory_order_acquire);
			if (atomic_load_explicit((_Atomic uint32_t *)&m->state, memory_order_relaxed) == s &&
			    kf_load64(&m->alloc_ns) == an && kf_load64(&m->free_ns) == fn &&
			    copy->alloc_ns == an && copy->free_ns == fn) {
				copy->state = s;
				return s;
			}
		}
		uint64_t now = kf_now_ns();
		if (!*deadline)
			*deadline = now + KF_SETTLE_NS;
		else if (now > *deadline)
			return KFENCE_SLOT_BUSY;
		/*
		 * Sleep, after a few yields: a yield-spinning thread can keep the
		 * CPU from a preempted owner for a long time on a loaded machine.
		 */
		if (++spins < 64) {
			sched_yield();
		} else {
			struct timespec ts = { 0, 50000 };
			nanosleep(&ts, NULL);
		}
	}
}

/*
 * A guard-page fault: blame the nearer of the two neighbouring objects, as
 * seen in one consistent copy (into obj).  -1 if neither can be named.
 */
static long kf_guard_blame(uintptr_t a, size_t g, struct kf_report_in *in, struct kfence_slot *obj)
{
	uint64_t deadline = 0;
	/* Guard g lies between slots g - 1 and g. */
	long first = g > 0 ? (long)g - 1 : (long)g;
	long last = g < kf_state->num_slots ? (long)g : (long)g - 1;
	for (int round = 0; round < 4; round++) {
		long best_slot = -1, held = -1;  /* held: whose copy obj has */
		uint64_t best = UINT64_MAX, an = 0, fn = 0;
		for (long slot = first; slot <= last; slot++) {
			uint32_t s = kf_slot_settle(slot, obj, &deadline);
			if (s == KFENCE_SLOT_BUSY)
				held = -1;  /* not blamed, and its failed copies overwrote obj */
			if (s != KFENCE_SLOT_ALLOCATED && s != KFENCE_SLOT_FREED)
				continue;  /* unused, or still BUSY */
			held = slot;
			bool left = slot < (long)g;  /* we are past its end, or before its start */
			uint64_t d = left ? a - (obj->addr + obj->size) : obj->addr - a;
			if (d < best) {
				best = d;
				best_slot = slot;
				an = obj->alloc_ns;
				fn = obj->free_ns;
				/* KFENCE's numbers: right of an object counts from its start. */
				in->distance = left ? (int64_t)(a - obj->addr) : -(int64_t)(obj->addr - a);
			}
		}
		if (best_slot < 0)
			return -1;
		if (held == best_slot)
			return best_slot;
		/* obj holds something else: take the chosen one again, unchanged. */
		uint32_t s = kf_slot_settle(best_slot, obj, &deadline);
		if ((s == KFENCE_SLOT_ALLOCATED || s == KFENCE_SLOT_FREED) && obj->alloc_ns == an &&
		    obj->free_ns == fn)
			return best_slot;
	}
	return -1;
}

/* True (and reported, and recovered) if the fault is ours. */
static bool kf_handle_pool_fault(int sig, siginfo_t *si, ucontext_t *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	if (si->si_code <= 0 || !kf_is_pool_address((void *)a))
		return false;
	kf_check_owner();  /* a new process reads and reports its own state */
	size_t pg = (a - kf_pool.start) / kf_page;
	uintptr_t page = kf_pool.start + pg * kf_page;
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID, .access = kf_fault_access(uc), .addr = a,
		.slot = -1, .fault_pc = kf_fault_pc(uc),
	};
	/* The object as it was when we looked: the slot may be reused while we report. */
	struct kfence_slot obj;
	long slot = kf_addr_slot(a);
	if (slot >= 0) {
		uint64_t deadline = 0;
		uint32_t state = kf_slot_settle(slot, &obj, &deadline);
		if (state == KFENCE_SLOT_ALLOCATED) {
			/* Raced with the allocation that is opening this page: retry. */
			kf_recover(sig, si, page);
			return true;
		}
		if (state == KFENCE_SLOT_FREED) {
			in.kind = KFENCE_BUG_UAF;
			in.slot = slot;
		}
		/* Never used, or BUSY for too long: an access we can pin on no object. */
	} else {
		in.slot = kf_guard_blame(a, pg / 2, &in, &obj);
		if (in.slot >= 0)
			in.kind = KFENCE_BUG_OOB;
	}
	struct kfence_stack st;
	kf_fault_stack(in.fault_pc, &st);
	in.stack = &st;
	kf_report_object(&in, in.slot >= 0 ? &obj : NULL);
	/* Recover as KFENCE does: let the access complete and go on. */
	kf_recover(sig, si, page);
	/*
	 * Only now flag an opened guard for the next allocation beside it to
	 * close: flagged earlier, a close racing with the report would be undone
	 * by our reopening and the guard would stay open for good.
	 */
	if (slot < 0)
		kf_mark_guard_open(pg / 2);
	return true;
}

/* === The program's view of its mask === */

/* Set this thread's view; sent signals it no longer blocks are delivered now. */
static void kf_view_set(unsigned view)
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

static int kf_real_mask(int how, const sigset_t *set, sigset_t *old)
{
	if (KF_LIKELY(kf_libc_pthread_sigmask != NULL))
		return kf_libc_pthread_sigmask(how, set, old);
	/* Not found (cannot happen with glibc): the system call, rather than a crash. */
	return syscall(SYS_rt_sigprocmask, how, set, old, _NSIG / 8) ? errno : 0;
}

/*
 * pthread_sigmask() as the program sees it: SIGSEGV and SIGBUS go to the
 * view, never to the kernel (and are unblocked there if a thread had them
 * blocked before we took over); everything else to glibc's own, which also
 * keeps its internal signals out of the set.
 */
static int kf_mask(int how, const sigset_t *set, sigset_t *old)
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

/* === Handler === */

/* The program's action for sig, reset to SIG_DFL under the lock if SA_RESETHAND asks. */
static void kf_app_take(int i, struct sigaction *app)
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

static void kf_chain(int sig, siginfo_t *si, ucontext_t *uc)
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
	unsigned view = kf_view;
	kf_view = view | kf_bits_of(&m);
	kf_strip(&m);
	kf_real_mask(SIG_SETMASK, &m, NULL);
	if (app.sa_flags & SA_SIGINFO)
		app.sa_sigaction(sig, si, uc);
	else
		h(sig);
	/* Returning restores the interrupted mask (sigreturn), and the view with it. */
	kf_view_set(view);
}

static void kf_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	if (!kf_handle_pool_fault(sig, si, uc)) {
		unsigned bit = sig == SIGSEGV ? 1 : 2;
		if (!(kf_view & bit))
			kf_chain(sig, si, uc);
		else if (si->si_code > 0)
			kf_default_action(sig, si);  /* the kernel's way with a blocked fault */
		else
			kf_pending |= bit;  /* sent while the program blocks it */
	}
	errno = saved;
}

static void kf_resolve(void)
{
	void *libc = dlopen(LIBC_SO, RTLD_LAZY | RTLD_NOLOAD);
	void *from = libc ? libc : RTLD_NEXT;
	kf_libc_sysv_signal = (__sighandler_t (*)(int, __sighandler_t))dlsym(from, "sysv_signal");
	kf_libc_signal = (__sighandler_t (*)(int, __sighandler_t))dlsym(from, "signal");
	*(void **)&kf_libc_pthread_sigmask = dlsym(from, "pthread_sigmask");
	*(void **)&kf_libc_pthread_create = dlsym(from, "pthread_create");
	*(void **)&kf_libc_siglongjmp = dlsym(from, "siglongjmp");
	*(void **)&kf_libc_longjmp_chk = dlsym(from, "__longjmp_chk");
	if (libc)
		dlclose(libc);
}

/* Before the program's constructors: they may block signals or jump already. */
__attribute__((constructor)) static void kf_fault_constructor(void)
{
	if (!kf_libc_pthread_sigmask)
		kf_resolve();
	pthread_atfork(NULL, NULL, kf_app_atfork_child);
}

int kf_install_fault_handler(void)
{
	kf_resolve();
	if (!kf_libc_pthread_sigmask || !kf_libc_pthread_create || !kf_libc_siglongjmp)
		return -1;
	static const int sigs[2] = { SIGSEGV, SIGBUS };
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = kf_handler;
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
	if (rc != 0)
		return -1;
	/* This thread may have them blocked already (inherited over exec): view them. */
	kf_mask(SIG_BLOCK, NULL, NULL);
	return 0;
}

/* === Interposed sigaction and signal === */

int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
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
static __sighandler_t kf_signal(int sig, __sighandler_t handler, int flags)
{
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
 * (restartable, the signal blocked in its handler); every other signal goes
 * to glibc's own, which also knows what siginterrupt() asked for.
 */
__sighandler_t signal(int sig, __sighandler_t handler)
{
	if (kf_sig_index(sig) < 0) {
		if (!kf_libc_signal)
			kf_resolve();
		if (kf_libc_signal)
			return kf_libc_signal(sig, handler);
	}
	return kf_signal(sig, handler, SA_RESTART);
}

__sighandler_t bsd_signal(int sig, __sighandler_t handler) __attribute__((alias("signal"), copy(signal)));

__sighandler_t sysv_signal(int sig, __sighandler_t handler)
{
	if (kf_sig_index(sig) < 0) {
		if (!kf_libc_sysv_signal)
			kf_resolve();
		if (kf_libc_sysv_signal)
			return kf_libc_sysv_signal(sig, handler);
	}
	return kf_signal(sig, handler, SA_RESETHAND | SA_NODEFER);
}

/* === Interposed mask functions === */

int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
	return kf_mask(how, set, old);
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old)
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

/*
 * siglongjmp() to a sigsetjmp(env, 1) puts back the saved mask with glibc's
 * internal call: the view follows it.  (The saved mask is the kernel's, in
 * which SIGSEGV and SIGBUS are never blocked while we are installed.)
 * A longjmp that keeps the mask keeps the view, as the kernel would.
 */
static void kf_longjmp_view(struct __jmp_buf_tag *env)
{
	if (env->__mask_was_saved && atomic_load_explicit(&kf_installed, memory_order_relaxed))
		kf_view_set(kf_bits_of(&env->__saved_mask));
}

void siglongjmp(sigjmp_buf env, int val)
{
	kf_longjmp_view(env);
	kf_libc_siglongjmp(env, val);
}

void longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp"), copy(siglongjmp)));
void _longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp"), copy(siglongjmp)));

/* What _FORTIFY_SOURCE turns longjmp() into. */
void __longjmp_chk(sigjmp_buf env, int val) __attribute__((noreturn));
void __longjmp_chk(sigjmp_buf env, int val)
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
		kf_resolve();
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

/* === The System V calls, for SIGSEGV and SIGBUS: glibc's would bypass us === */

/* glibc's own name(sig), for the other signals; -1 (ENOSYS) if it has none. */
static int kf_libc_sysv_call(const char *name, int sig)
{
	int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
	if (!fn) {
		errno = ENOSYS;
		return -1;
	}
	return fn(sig);
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

int sigsuspend(const sigset_t *mask)
{
	static int (*libc)(const sigset_t *);
	if (!libc)
		libc = (int (*)(const sigset_t *))dlsym(RTLD_NEXT, "sigsuspend");
	sigset_t copy;
	return libc(kf_wait_mask(mask, &copy));
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask)
{
	static int (*libc)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
	if (!libc)
		*(void **)&libc = dlsym(RTLD_NEXT, "ppoll");
	sigset_t copy;
	return libc(fds, n, t, kf_wait_mask(mask, &copy));
}

int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t,
	    const sigset_t *mask)
{
	static int (*libc)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
			   const sigset_t *);
	if (!libc)
		*(void **)&libc = dlsym(RTLD_NEXT, "pselect");
	sigset_t copy;
	return libc(n, r, w, e, t, kf_wait_mask(mask, &copy));
}

int epoll_pwait(int fd, struct epoll_event *ev, int max, int timeout, const sigset_t *mask)
{
	static int (*libc)(int, struct epoll_event *, int, int, const sigset_t *);
	if (!libc)
		*(void **)&libc = dlsym(RTLD_NEXT, "epoll_pwait");
	sigset_t copy;
	return libc(fd, ev, max, timeout, kf_wait_mask(mask, &copy));
}
