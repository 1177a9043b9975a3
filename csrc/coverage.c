/*
 * Allocation coverage, as the kernel's KFENCE has it (skip_covered_thresh):
 * once the pool is fuller than skip_covered_thresh percent, an allocation
 * whose allocation stack already has a live guarded object is skipped, so
 * the slots left go to sites not seen yet.  A pool filled at start-up with
 * long-lived objects of a few sites then still guards new code.
 *
 * "Has a live guarded object" is a counting Bloom filter over the site of
 * each live guarded object: each guarded allocation adds its site, its free
 * takes it away.  A false "covered" is possible (two sites sharing
 * counters), a false "new" is not.  Private memory, so a forked child starts
 * with what its memory holds: its parent's live objects, which are its own.
 *
 * The site is the call site of the allocation (the return address into the
 * code that called malloc), not a hash of the stack as in the kernel: the
 * test-suite mode asks for every allocation, and an unwind per allocation
 * once the pool is pressed cost a CPython test run 2x more than the checks
 * themselves.  Sites behind one wrapper (xmalloc, PyMem_RawMalloc) count as
 * one site: they share the pool past the threshold, and the reserve stays
 * for code that calls the allocator itself, which is where C bugs are.
 * CPython's allocator hooks (pyext.c) give the bytecode instruction running
 * as the site: without it their objects had none, were never skipped, and a
 * regression-test run filled the pool with import-time objects in its first
 * seconds and guarded nothing new after (154M allocations skipped for
 * capacity over CPython's test slice, bench/field.py).  All that one line of
 * Python allocates, C below it included, is one site.
 */
#define _GNU_SOURCE
#include "kf_internal.h"

static _Atomic uint16_t *kf_covered;  /* counters, a power of two of them */
static uint32_t kf_covered_mask;

bool kf_coverage_init(size_t num_slots)
{
	/* Four counters a slot, as the kernel's ALLOC_COVERED_ORDER. */
	size_t n = 1;
	while (n < 4 * num_slots)
		n <<= 1;
	kf_covered = kf_os_map(n * sizeof(*kf_covered));
	kf_covered_mask = (uint32_t)(n - 1);
	return kf_covered != NULL;
}

KF_SIGSAFE uint32_t kf_site(uintptr_t caller)
{
	if (!caller)
		return 0;  /* unknown: never counted as covered */
	uint64_t h = caller * 0x9e3779b97f4a7c15ull;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	return (uint32_t)h | 1;  /* never 0: 0 marks "no site" */
}

/* The filter's two counters for hash h. */
static _Atomic uint16_t *kf_counter_of(uint32_t h, int which)
{
	uint32_t i = which ? (h >> 16) * 0x9e3779b1u : h;
	return &kf_covered[i & kf_covered_mask];
}

void kf_coverage_add(uint32_t h, int delta)
{
	if (!kf_covered || !h)
		return;
	for (int k = 0; k < 2; k++)
		atomic_fetch_add_explicit(kf_counter_of(h, k), (uint16_t)delta, memory_order_relaxed);
}

/* True when the allocation being made now comes from a site with a live guarded object. */
static bool kf_coverage_contains(uint32_t h)
{
	for (int k = 0; k < 2; k++)
		if (!atomic_load_explicit(kf_counter_of(h, k), memory_order_relaxed))
			return false;
	return true;
}

bool kf_coverage_skip(const struct kfence_control *c, uint32_t site)
{
	uint64_t live = __atomic_load_n(&kf_state->counters[KFENCE_COUNTER_ALLOCATED],
					__ATOMIC_RELAXED);
	uint32_t thresh = *(volatile const uint32_t *)&c->skip_covered_thresh;
	if (!kf_covered || !site || live <= (uint64_t)kf_state->num_slots * thresh / 100 ||
	    !kf_coverage_contains(site))
		return false;
	kf_count(KFENCE_COUNTER_SKIP_COVERED, 1);
	return true;
}
