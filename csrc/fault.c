/*
 * The fault path: a SIGSEGV/SIGBUS handler that claims kernel-raised faults
 * inside the pool, reports them and recovers; every other fault goes to the
 * handler the program installed, or gets the default action (a core dump).
 *
 * Programs install their own SIGSEGV handlers, and some (Python's
 * faulthandler) restore the previous one and re-raise.  Like the JVM's
 * libjsig, we interpose sigaction() and signal(): while our handler is
 * installed, the program's handler is only recorded and chained to, so ours
 * stays first in the kernel and pool faults are never lost.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <gnu/lib-names.h>
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include "kf_internal.h"

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

/* glibc's own signal() and sysv_signal(), for every other signal. */
static __sighandler_t (*kf_libc_signal)(int, __sighandler_t);
static __sighandler_t (*kf_libc_sysv_signal)(int, __sighandler_t);

/* What the program believes is installed for SIGSEGV (0) and SIGBUS (1). */
static struct sigaction kf_app_action[2];
static _Atomic bool kf_installed;

static int kf_sig_index(int sig)
{
	return sig == SIGSEGV ? 0 : sig == SIGBUS ? 1 : -1;
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
	void *pcs[KF_STACK_MAX + 16];
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

/* True (and reported, and recovered) if the fault is ours. */
static bool kf_handle_pool_fault(int sig, siginfo_t *si, ucontext_t *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	if (si->si_code <= 0 || !kf_is_pool_address((void *)a))
		return false;
	size_t pg = (a - kf_pool.start) / kf_page;
	uintptr_t page = kf_pool.start + pg * kf_page;
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID, .access = kf_fault_access(uc), .addr = a,
		.slot = -1, .fault_pc = kf_fault_pc(uc),
	};
	long slot = kf_addr_slot(a);
	if (slot >= 0) {
		uint32_t state = atomic_load((_Atomic uint32_t *)&kf_slots[slot].state);
		if (state == KFENCE_SLOT_ALLOCATED) {
			/* Raced with the allocation that is opening this page: retry. */
			kf_recover(sig, si, page);
			return true;
		}
		if (state != KFENCE_SLOT_UNUSED) {
			in.kind = KFENCE_BUG_UAF;
			in.slot = slot;
		}
	} else {
		/* A guard page: blame the nearer of the two neighbouring objects. */
		size_t g = pg / 2;  /* guard g lies between slots g - 1 and g */
		uint64_t best = UINT64_MAX;
		for (int side = 0; side < 2; side++) {
			if ((side == 0 && g == 0) || (side == 1 && g >= kf_state->num_slots))
				continue;
			long slot = side == 0 ? (long)g - 1 : (long)g;
			const struct kfence_slot *m = &kf_slots[slot];
			if (atomic_load((_Atomic uint32_t *)&m->state) == KFENCE_SLOT_UNUSED)
				continue;
			/* Left neighbour: we are past its end; right one: before its start. */
			uint64_t d = side == 0 ? a - (m->addr + m->size) : m->addr - a;
			if (d < best) {
				best = d;
				in.kind = KFENCE_BUG_OOB;
				in.slot = slot;
				/* KFENCE's numbers: right of an object counts from its start. */
				in.distance = side == 0 ? (int64_t)(a - m->addr) : -(int64_t)(m->addr - a);
			}
		}
	}
	struct kfence_stack st;
	kf_fault_stack(in.fault_pc, &st);
	in.stack = &st;
	kf_report(&in);
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

/* === Handler === */

static void kf_chain(int sig, siginfo_t *si, void *uc)
{
	struct sigaction *app = &kf_app_action[kf_sig_index(sig)];
	if ((app->sa_flags & SA_SIGINFO) && app->sa_sigaction) {
		void (*fn)(int, siginfo_t *, void *) = app->sa_sigaction;
		if (app->sa_flags & SA_RESETHAND)
			app->sa_handler = SIG_DFL, app->sa_flags &= ~SA_SIGINFO;
		fn(sig, si, uc);
		return;
	}
	void (*h)(int) = app->sa_handler;
	if (h == SIG_IGN && si->si_code <= 0)
		return;  /* sent, and ignored: nothing happens */
	if (h == SIG_DFL || h == SIG_IGN) {
		kf_default_action(sig, si);
		return;
	}
	if (app->sa_flags & SA_RESETHAND)
		app->sa_handler = SIG_DFL;
	h(sig);
}

static void kf_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	if (!kf_handle_pool_fault(sig, si, uc))
		kf_chain(sig, si, uc);
	errno = saved;
}

static void kf_resolve_signal(void)
{
	void *libc = dlopen(LIBC_SO, RTLD_LAZY | RTLD_NOLOAD);
	if (!libc)
		return;
	kf_libc_sysv_signal = (__sighandler_t (*)(int, __sighandler_t))dlsym(libc, "sysv_signal");
	kf_libc_signal = (__sighandler_t (*)(int, __sighandler_t))dlsym(libc, "signal");
	dlclose(libc);
}

int kf_install_fault_handler(void)
{
	kf_resolve_signal();
	static const int sigs[2] = { SIGSEGV, SIGBUS };
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = kf_handler;
	/* SA_ONSTACK: on a thread that has an alternate stack (Go, overflows), use it. */
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (int i = 0; i < 2; i++)
		if (__sigaction(sigs[i], &sa, &kf_app_action[i]) != 0)
			return -1;
	atomic_store(&kf_installed, true);
	return 0;
}

/* === Interposed sigaction and signal === */

int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	int i = kf_sig_index(sig);
	if (i < 0 || !atomic_load(&kf_installed))
		return __sigaction(sig, act, old);
	struct sigaction prev = kf_app_action[i];
	if (act)
		kf_app_action[i] = *act;
	if (old)
		*old = prev;
	return 0;
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
			kf_resolve_signal();
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
			kf_resolve_signal();
		if (kf_libc_sysv_signal)
			return kf_libc_sysv_signal(sig, handler);
	}
	return kf_signal(sig, handler, SA_RESETHAND | SA_NODEFER);
}
