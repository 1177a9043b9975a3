/*
 * Stacks: where our own code is, where the unwinder is, and capturing the
 * caller's stack with our frames left out.
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

#include "kf_internal.h"

/* Text range of this library. */
static uintptr_t kf_self_lo, kf_self_hi;

/* Other modules whose frames are ours too (the Python hooks): kfence_register_internal(). */
static struct {
	uintptr_t lo, hi;
} kf_internal[4];
static _Atomic int kf_internal_count;

KF_SIGSAFE bool kf_in_self(uintptr_t pc)
{
	if (pc >= kf_self_lo && pc < kf_self_hi)
		return true;
	for (int i = 0; i < atomic_load_explicit(&kf_internal_count, memory_order_acquire); i++)
		if (pc >= kf_internal[i].lo && pc < kf_internal[i].hi)
			return true;
	return false;
}

/*
 * The unwinder's own code (libgcc_s).  It calls malloc and free while it
 * holds its lock on registered frames (__register_frame_info, used by JITs);
 * unwinding from there would wait on that lock forever.  So what it
 * allocates is never sampled, and what it frees gets no stack.
 */
static struct {
	uintptr_t lo, hi;
} kf_unwinder;

KF_SIGSAFE bool kf_unwind_safe(uintptr_t caller)
{
	return !(caller >= kf_unwinder.lo && caller < kf_unwinder.hi);
}

static int kf_find_unwinder(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	const char *base = strrchr(info->dlpi_name, '/');
	if (strncmp(base ? base + 1 : info->dlpi_name, "libgcc_s.so", 11) != 0)
		return 0;
	uintptr_t range[3] = { 0, UINTPTR_MAX, 0 };
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t s = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		range[1] = s < range[1] ? s : range[1];
		range[2] = s + ph->p_memsz > range[2] ? s + ph->p_memsz : range[2];
	}
	kf_unwinder.lo = range[1];
	kf_unwinder.hi = range[2];
	return 1;
}

void kf_capture_stack(struct kfence_stack *st)
{
	void *pcs[KFENCE_STACK_MAX + 16];
	int n = backtrace(pcs, (int)(kf_opt.stack_depth + 16));
	int skip = 0;
	while (skip < n && kf_in_self((uintptr_t)pcs[skip]))
		skip++;
	uint32_t depth = 0;
	for (int i = skip; i < n && depth < kf_opt.stack_depth; i++)
		st->pc[depth++] = (uintptr_t)pcs[i];
	st->depth = depth;
	kf_modules_note(st);  /* so that a reader can place these pcs after we exit */
}

/* The executable range of the module containing data[0], into data[1..2]. */
static int kf_find_module(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	uintptr_t *range = data, target = range[0];
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		uintptr_t s = info->dlpi_addr + ph->p_vaddr;
		if (s < lo)
			lo = s;
		if (s + ph->p_memsz > hi)
			hi = s + ph->p_memsz;
	}
	if (target >= lo && target < hi) {
		range[1] = lo;
		range[2] = hi;
		return 1;
	}
	return 0;
}

int kfence_register_internal(const void *addr)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	uintptr_t range[3] = { (uintptr_t)addr, 0, 0 };
	if (!dl_iterate_phdr(kf_find_module, range))
		return -1;
	int rc = -1;
	pthread_mutex_lock(&lock);  /* registrations are rare: one at a time */
	int n = atomic_load(&kf_internal_count);
	if (n < 4) {
		kf_internal[n].lo = range[1];
		kf_internal[n].hi = range[2];
		atomic_store_explicit(&kf_internal_count, n + 1, memory_order_release);
		rc = 0;
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

void kf_stack_init(void)
{
	/* The unwinder loads libgcc_s and allocates on first use: not in a fault. */
	void *warm[4];
	backtrace(warm, 4);
	dl_iterate_phdr(kf_find_unwinder, NULL);
	uintptr_t self_range[3] = { (uintptr_t)&kf_stack_init, 0, 0 };
	dl_iterate_phdr(kf_find_module, self_range);
	kf_self_lo = self_range[1];
	kf_self_hi = self_range[2];
}
