/*
 * What a pool address means: the bug a fault there is (out-of-bounds,
 * use-after-free or invalid), the object to blame, and how far from it.
 *
 * Like GWP-ASan's __gwp_asan_diagnose_error, the diagnosis is pure: it sees
 * the pool only through its geometry and a reader of slot metadata, so the
 * same code serves the fault handler, on the live state, and a post-mortem
 * reader, on a state copied out of a crashed process (kfence_diagnose).
 * The live reader waits for BUSY slots and copies consistently, with a
 * bounded wait; the plain one reads an array nothing writes any more.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>
#include <time.h>

#include "kf_internal.h"

/*
 * A guard-page fault: blame the nearer of the two neighbouring objects, as
 * seen in one consistent copy (into obj).  -1 if neither can be named.
 */
KF_SIGSAFE static long kf_guard_blame(const struct kf_pool_view *pool, uintptr_t a,
				      size_t g, int64_t *distance, struct kfence_slot *obj)
{
	/* Guard g lies between slots g - 1 and g. */
	long first = g > 0 ? (long)g - 1 : (long)g;
	long last = g < pool->num_slots ? (long)g : (long)g - 1;
	for (int round = 0; round < 4; round++) {
		long best_slot = -1, held = -1;  /* held: whose copy obj has */
		uint64_t best = UINT64_MAX, an = 0, fn = 0;
		for (long slot = first; slot <= last; slot++) {
			uint32_t s = pool->read_slot(pool->ctx, slot, obj);
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
				*distance = left ? (int64_t)(a - obj->addr) : -(int64_t)(obj->addr - a);
			}
		}
		if (best_slot < 0)
			return -1;
		if (held == best_slot)
			return best_slot;
		/* obj holds something else: take the chosen one again, unchanged. */
		uint32_t s = pool->read_slot(pool->ctx, best_slot, obj);
		if ((s == KFENCE_SLOT_ALLOCATED || s == KFENCE_SLOT_FREED) && obj->alloc_ns == an &&
		    obj->free_ns == fn)
			return best_slot;
	}
	return -1;
}

KF_SIGSAFE int kf_diagnose(const struct kf_pool_view *pool, uintptr_t a,
			   struct kfence_finding *out, struct kfence_slot *obj)
{
	*out = (struct kfence_finding){
		.kind = KFENCE_BUG_KINDS, .slot = -1, .addr = a, .guard = -1,
		.slot_state = KFENCE_SLOT_UNUSED,
	};
	if (a - pool->start >= pool->size)
		return KFENCE_DIAGNOSIS_NOT_OURS;
	size_t pg = (a - pool->start) / pool->page;
	int rc = KFENCE_DIAGNOSIS_BUG;
	long slot;
	out->page = pool->start + pg * pool->page;
	out->kind = KFENCE_BUG_INVALID;
	if (pg & 1) {
		/* Slot (pg - 1) / 2's data page. */
		slot = (long)(pg - 1) / 2;
		uint32_t state = pool->read_slot(pool->ctx, slot, obj);
		if (state == KFENCE_SLOT_ALLOCATED) {
			/* Open for a live object: a fault there raced with the allocation opening it. */
			rc = KFENCE_DIAGNOSIS_LIVE;
			out->kind = KFENCE_BUG_KINDS;
			out->slot = (int32_t)slot;
		} else if (state == KFENCE_SLOT_FREED) {
			out->kind = KFENCE_BUG_UAF;
			out->slot = (int32_t)slot;
		}
		/* Never used, or BUSY for too long: an access we can pin on no object. */
	} else {
		out->guard = (int64_t)(pg / 2);
		slot = kf_guard_blame(pool, a, pg / 2, &out->distance, obj);
		if (slot >= 0) {
			out->kind = KFENCE_BUG_OOB;
			out->slot = (int32_t)slot;
		} else {
			out->distance = 0;  /* a neighbour measured, then lost: no object, no distance */
		}
	}
	if (out->slot >= 0) {
		out->slot_state = obj->state;
		out->object_addr = obj->addr;
		out->object_size = obj->size;
	}
	return rc;
}

/* === The live reader === */

/*
 * How long a fault waits for a slot another thread is allocating or freeing
 * (BUSY) to settle.  Bounded: the owner may be the very thread we
 * interrupted, in which case it never settles while we wait.
 */
#define KF_SETTLE_NS 100000000ull

KF_SIGSAFE static uint64_t kf_load64(const uint64_t *p)
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
KF_SIGSAFE static uint32_t kf_slot_settle(void *deadline_p, long slot, struct kfence_slot *copy)
{
	uint64_t *deadline = deadline_p;
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

KF_SIGSAFE void kf_live_pool_view(struct kf_pool_view *pool, uint64_t *deadline)
{
	*deadline = 0;
	*pool = (struct kf_pool_view){
		.start = kf_pool.start, .size = kf_pool.size, .page = kf_page,
		/* From the pool's own geometry, not the shared header another process can write. */
		.num_slots = (kf_pool.size / kf_page - 1) / 2, .read_slot = kf_slot_settle,
		.ctx = deadline,
	};
}

/* === A copied state === */

/* Slot metadata of a state nothing writes any more: no waiting, only bounds. */
KF_SIGSAFE static uint32_t kf_read_copied(void *state_p, long slot, struct kfence_slot *copy)
{
	const struct kfence_state *state = state_p;
	if (slot < 0 || (uint64_t)slot >= state->num_slots)
		return KFENCE_SLOT_UNUSED;
	const struct kfence_slot *m =
		(const struct kfence_slot *)((const char *)state + state->slots_offset) + slot;
	if (m->state == KFENCE_SLOT_UNUSED)
		return KFENCE_SLOT_UNUSED;
	memcpy(copy, m, sizeof(*copy));
	return copy->state;
}

KF_SIGSAFE int kfence_diagnose(const struct kfence_state *state, uint64_t addr,
			       struct kfence_finding *out)
{
	struct kf_pool_view pool;
	uint64_t deadline;
	struct kfence_slot obj;
	if (state && state == kf_state) {
		/* This process's own: slots may be BUSY, or have no file space behind them yet. */
		kf_live_pool_view(&pool, &deadline);
	} else {
		/*
		 * The header's own word for where the slots are, checked against
		 * its size of the whole (the caller vouches for total_size bytes):
		 * a forged or damaged header must not send the reads elsewhere.
		 */
		if (!state || memcmp(state->magic, "KFENCE\0\0", 8) != 0 ||
		    state->version != KFENCE_STATE_VERSION || !state->page_size ||
		    (state->page_size & (state->page_size - 1)) ||
		    state->header_size != sizeof(*state) ||
		    state->slot_size != sizeof(struct kfence_slot) ||
		    state->slots_offset < sizeof(*state) || state->slots_offset > state->total_size ||
		    state->num_slots > (state->total_size - state->slots_offset) / sizeof(struct kfence_slot))
			return KFENCE_DIAGNOSIS_BAD_STATE;
		pool = (struct kf_pool_view){
			.start = state->pool_start, .size = state->pool_size, .page = state->page_size,
			.num_slots = state->num_slots, .read_slot = kf_read_copied, .ctx = (void *)state,
		};
	}
	return kf_diagnose(&pool, addr, out, &obj);
}
