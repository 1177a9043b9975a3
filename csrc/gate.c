/*
 * The sampling gate: the slow path behind every allocation entry point
 * decides whether this allocation gets a guarded object.  With sample_rate,
 * each thread samples about one allocation in N (a random countdown); else a
 * process-wide time gate opens once per sample_interval (plus burst).
 *
 * The countdown is the caller's (a thread's, or the CPython hooks'): the
 * caller decrements it and comes here when it is 0 or less.  0 means a drawn
 * countdown ran out at this allocation; below 0 means none was drawn yet (a
 * new thread, or one told to look again): this allocation is then only the
 * first of a fresh draw, not a sample by default, so that every thread's
 * first allocation is not guarded whatever the rate.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>

#include "kf_internal.h"

KF_TLS struct kf_thread kf_self;

/* Time gate: the next time a sample may be taken, and the burst left. */
static _Atomic uint64_t kf_next_sample_ns;
static _Atomic int64_t kf_burst_left;

KF_SIGSAFE uint64_t kf_random(void)
{
	uint64_t x = kf_self.rng;
	if (KF_UNLIKELY(!x))
		x = kf_os_random64() ^ ((uint64_t)kf_tid() << 32);
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	kf_self.rng = x;
	return x;
}

/* How many allocations this thread makes before it asks again. */
static int32_t kf_rate_countdown(uint32_t rate)
{
	if (rate <= 1)
		return 1;
	/* Uniform in [1, 2*rate - 1]: mean rate, no pattern to fall in step with. */
	return (int32_t)(1 + kf_random() % (2ull * rate - 1));
}

static bool kf_time_gate(const struct kfence_control *c, int32_t *countdown)
{
	uint64_t now = kf_now_ns();
	uint64_t next = atomic_load_explicit(&kf_next_sample_ns, memory_order_relaxed);
	if (now >= next &&
	    atomic_compare_exchange_strong(&kf_next_sample_ns, &next,
					   now + (uint64_t)c->sample_interval * 1000000ull)) {
		atomic_store_explicit(&kf_burst_left, c->burst, memory_order_relaxed);
		if (c->burst)
			*countdown = 1;
		return true;
	}
	/* KFENCE's burst: the next allocations of the thread that opened the gate. */
	if (atomic_load_explicit(&kf_burst_left, memory_order_relaxed) > 0 &&
	    atomic_fetch_sub(&kf_burst_left, 1) > 0) {
		*countdown = 1;
		return true;
	}
	return false;
}

void *kf_sample_alloc(int32_t *countdown, size_t size, size_t align, int cache, bool zero,
		      uintptr_t caller)
{
	int st = atomic_load_explicit(&kf_start_state, memory_order_acquire);
	if (KF_UNLIKELY(st != KF_START_READY)) {
		/* Not started yet: look again soon.  Off for good: look rarely. */
		*countdown = st == KF_START_FAILED ? INT32_MAX : 0;
		return NULL;
	}
	if (kf_self.in_lib || !kf_unwind_safe(caller)) {
		/* malloc from inside the library (dlsym) or the unwinder: straight to glibc. */
		*countdown = 0;
		return NULL;
	}
	if (!kf_check_owner()) {
		*countdown = 0;  /* a vfork child: the memory, and so the state, is its parent's */
		return NULL;
	}
	const struct kfence_control *c = &kf_state->control;
	kf_sweep_if_asked(c);
	uint32_t rate = *(volatile uint32_t *)&c->sample_rate;
	if (!*(volatile uint32_t *)&c->enabled) {
		*countdown = KF_IDLE_PERIOD;
		return NULL;
	}
	if (rate) {
		int32_t next = kf_rate_countdown(rate);
		if (*countdown < 0 && next > 1) {
			/* No countdown yet: this allocation is the first of the one drawn now. */
			*countdown = next - 1;
			return NULL;
		}
		*countdown = *countdown < 0 ? kf_rate_countdown(rate) : next;
	} else if (!*(volatile uint32_t *)&c->sample_interval) {
		*countdown = KF_IDLE_PERIOD;  /* the time gate is off (the kernel's sample_interval=0) */
		return NULL;
	} else {
		*countdown = KF_CLOCK_CHECK_PERIOD;
		if (!kf_time_gate(c, countdown))
			return NULL;
	}
	int saved = errno;
	uint32_t site = kf_site(caller);
	/* The first object of the process loads the unwinder, then the caller is known. */
	if (kf_coverage_skip(c, site) || !kf_unwinder_start(caller) || !kf_unwind_safe(caller)) {
		errno = saved;
		return NULL;
	}
	return kf_guarded_alloc(size, align, (int)kf_opt.placement,
				(unsigned)cache | (zero ? KF_ZERO : 0), site, saved);
}
