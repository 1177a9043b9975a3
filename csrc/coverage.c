/*
 * Allocation coverage, as the kernel's KFENCE has it (skip_covered_thresh):
 * once the pool is fuller than skip_covered_thresh percent, an allocation
 * whose allocation stack already has a live guarded object is skipped, so
 * the slots left go to sites not seen yet.  A pool filled at start-up with
 * long-lived objects of a few sites then still guards new code.
 *
 * "Has a live guarded object" is a counting Bloom filter over a hash of the
 * first KF_COVERAGE_DEPTH frames of the allocation stack: each guarded
 * allocation adds its hash, its free takes it away.  A false "covered" is
 * possible (two sites sharing counters), a false "new" is not.  Private
 * memory, so a forked child starts with what its memory holds: its parent's
 * live objects, which are its own.  Everything here runs on the slow path.
 */
#define _GNU_SOURCE
#include "kf_internal.h"

/* Frames that name a site: deep enough to tell callers of a wrapper apart. */
#define KF_COVERAGE_DEPTH 8

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

KF_SIGSAFE uint32_t kf_stack_hash(const struct kfence_stack *st)
{
	/* FNV-1a over the return addresses, then a final mix for the two indices. */
	uint64_t h = 0xcbf29ce484222325ull;
	for (uint32_t i = 0; i < st->depth && i < KF_COVERAGE_DEPTH; i++) {
		h ^= st->pc[i];
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return (uint32_t)h | 1;  /* never 0: 0 marks "no hash" */
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

bool kf_coverage_skip(const struct kfence_control *c)
{
	uint64_t live = __atomic_load_n(&kf_state->counters[KFENCE_COUNTER_ALLOCATED],
					__ATOMIC_RELAXED);
	uint32_t thresh = *(volatile const uint32_t *)&c->skip_covered_thresh;
	if (!kf_covered || live <= (uint64_t)kf_state->num_slots * thresh / 100)
		return false;
	struct kfence_stack st;
	kf_capture_stack_depth(&st, KF_COVERAGE_DEPTH);
	if (!kf_coverage_contains(kf_stack_hash(&st)))
		return false;
	kf_count(KFENCE_COUNTER_SKIP_COVERED, 1);
	return true;
}
