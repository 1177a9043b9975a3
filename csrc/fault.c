/*
 * The fault path: a SIGSEGV/SIGBUS handler that claims kernel-raised faults
 * inside the pool, reports them and recovers; every other fault goes to the
 * handler the program installed (sigchain.c), or gets the default action (a
 * core dump), unless the program's view of its mask blocks it (sigmask.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <gnu/lib-names.h>
#include <execinfo.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>

#include "kf_internal.h"

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

static void kf_handler(int sig, siginfo_t *si, void *uc)
{
	int saved = errno;
	if (!kf_handle_pool_fault(sig, si, uc)) {
		if (!kf_view_blocks(sig))
			kf_chain(sig, si, uc);
		else if (si->si_code > 0)
			kf_default_action(sig, si);  /* the kernel's way with a blocked fault */
		else
			kf_view_hold(sig);  /* sent while the program blocks it */
	}
	errno = saved;
}

/* === Installation === */

/* glibc's own definition of name (in libc itself when it is loaded), or NULL. */
void *kf_libc_sym(const char *name)
{
	void *libc = dlopen(LIBC_SO, RTLD_LAZY | RTLD_NOLOAD);
	void *sym = dlsym(libc ? libc : RTLD_NEXT, name);
	if (libc)
		dlclose(libc);
	return sym;
}

/* glibc's own name(sig), for the other signals; -1 (ENOSYS) if it has none. */
int kf_libc_sysv_call(const char *name, int sig)
{
	int (*fn)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
	if (!fn) {
		errno = ENOSYS;
		return -1;
	}
	return fn(sig);
}

int kf_install_fault_handler(void)
{
	kf_sigchain_resolve();
	if (!kf_sigmask_resolve() || kf_sigchain_install(kf_handler) != 0)
		return -1;
	/* This thread may have them blocked already (inherited over exec): view them. */
	kf_mask(SIG_BLOCK, NULL, NULL);
	return 0;
}
