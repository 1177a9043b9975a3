/*
 * The fault path: a SIGSEGV/SIGBUS handler that claims kernel-raised faults
 * inside the pool, reports them as diagnose.c names them, and recovers;
 * every other fault goes to the handler the program installed (sigchain.c),
 * or gets the default action (a core dump), unless the program's view of
 * its mask blocks it (sigmask.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <gnu/lib-names.h>
#include <link.h>
#include <signal.h>
#include <ucontext.h>

#include "kf_internal.h"

/* === Classification === */

KF_SIGSAFE static int kf_fault_access(const ucontext_t *uc)
{
#if defined(__x86_64__)
	/* Page-fault error code: bit 1 set for a write. */
	return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? KFENCE_ACCESS_WRITE : KFENCE_ACCESS_READ;
#else
	(void)uc;
	return KFENCE_ACCESS_READ;
#endif
}

KF_SIGSAFE static uintptr_t kf_fault_pc(const ucontext_t *uc)
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
KF_SIGSAFE static void kf_fault_stack(uintptr_t pc, struct kfence_stack *st)
{
	if (!kf_unwind_safe(pc)) {
		/* A fault inside the unwinder, which may hold its lock: the pc alone. */
		st->pc[0] = pc;
		st->depth = 1;
		return;
	}
	/* No unwinder yet (a stray pointer into the pool before any object): the pc alone. */
	uintptr_t pcs[KFENCE_STACK_MAX + 16];
	int n = kf_backtrace(pcs, (int)kf_opt.stack_depth + 16);
	int i = 0;
	while (i < n && pcs[i] != pc)
		i++;
	uint32_t depth = 0;
	if (i == n) {
		/* Not found: our frames, then the signal trampoline, then the rest. */
		for (i = 0; i < n && kf_in_self(pcs[i]); i++)
			;
		i++;
		st->pc[depth++] = pc;
	}
	for (; i < n && depth < kf_opt.stack_depth; i++)
		st->pc[depth++] = pcs[i];
	st->depth = depth;
}

/* Let the faulting access complete; if the page cannot be opened, give up. */
KF_SIGSAFE static void kf_recover(int sig, const siginfo_t *si, uintptr_t page)
{
	if (kf_os_protect(page, kf_page, true) == 0)
		return;
	/* Returning would fault again forever: stop the way the fault would have. */
	kf_warn("cannot reopen the faulting pool page; taking the default action", NULL);
	kf_default_action(sig, si);
}

/* True (and reported, and recovered) if the fault is ours. */
KF_SIGSAFE static bool kf_handle_pool_fault(int sig, siginfo_t *si, ucontext_t *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	if (si->si_code <= 0 || !kf_is_pool_address((void *)a))
		return false;
	kf_check_owner();  /* a new process reads and reports its own state */
	struct kf_pool_view pool;
	uint64_t deadline;
	kf_live_pool_view(&pool, &deadline);
	/* The object as it was when we looked: the slot may be reused while we report. */
	struct kfence_slot obj;
	struct kfence_finding f;
	if (kf_diagnose(&pool, a, &f, &obj) == KFENCE_DIAGNOSIS_LIVE) {
		/* Raced with the allocation that is opening this page: retry. */
		kf_recover(sig, si, f.page);
		return true;
	}
	struct kf_report_in in = {
		.kind = (int)f.kind, .access = kf_fault_access(uc), .addr = a,
		.distance = f.distance, .slot = f.slot, .fault_pc = kf_fault_pc(uc),
	};
	struct kfence_stack st;
	kf_fault_stack(in.fault_pc, &st);
	in.stack = &st;
	kf_report_object(&in, in.slot >= 0 ? &obj : NULL);
	/* Recover as KFENCE does: let the access complete and go on. */
	kf_recover(sig, si, f.page);
	/*
	 * Only now flag an opened guard for the next allocation beside it to
	 * close: flagged earlier, a close racing with the report would be undone
	 * by our reopening and the guard would stay open for good.
	 */
	if (f.guard >= 0)
		kf_mark_guard_open((size_t)f.guard);
	return true;
}

KF_SIGSAFE static void kf_handler(int sig, siginfo_t *si, void *uc)
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

extern void *__libc_malloc(size_t);

/* The span of the module holding data[0], into data[1..2]. */
static int kf_module_span(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	uintptr_t *span = data, lo = UINTPTR_MAX, hi = 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t s = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type != PT_LOAD)
			continue;
		lo = s < lo ? s : lo;
		hi = s + ph->p_memsz > hi ? s + ph->p_memsz : hi;
	}
	if (span[0] < lo || span[0] >= hi)
		return 0;
	span[1] = lo;
	span[2] = hi;
	return 1;
}

/* True when p is in libc itself (the module that defines __libc_malloc). */
static bool kf_in_libc(const void *p)
{
	static uintptr_t libc[3];
	if (!libc[2]) {
		libc[0] = (uintptr_t)&__libc_malloc;
		dl_iterate_phdr(kf_module_span, libc);  /* dladdr() would scan libc's symbols */
	}
	return (uintptr_t)p >= libc[1] && (uintptr_t)p < libc[2];
}

/*
 * glibc's own definition of name (in libc itself when it is loaded), or NULL.
 * Usually libc is the next module after us: dlsym(RTLD_NEXT) finds it there
 * without a dlopen.  A dlopen of libc (RTLD_NOLOAD) lists its dependencies
 * with malloc each time: a dozen of them were 20 us of start-up here, and
 * they set glibc's heap up in programs that never allocate.
 */
void *kf_libc_sym(const char *name)
{
	void *sym = dlsym(RTLD_NEXT, name);
	if (kf_in_libc(sym))
		return sym;
	/* Another interposer between us and libc: ask libc itself. */
	static void *libc;
	if (!libc)
		libc = dlopen(LIBC_SO, RTLD_LAZY | RTLD_NOLOAD);  /* kept: libc is never unloaded */
	return libc ? dlsym(libc, name) : sym;
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
