/*
 * The pool: guarded objects in and out, the freelist, canaries and guards.
 *
 * Pool layout, in one reservation of 2 * num_slots + 1 pages:
 *
 *   [guard 0][data 0][guard 1][data 1] ... [data N-1][guard N]
 *
 * Slot i owns data page 2i+1; guard pages are shared between neighbours.
 * Every page is PROT_NONE except the data pages of allocated objects, so an
 * access past either end of an object, or to a freed object, faults.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "kf_internal.h"

struct kf_pool_range kf_pool;
struct kfence_state *kf_state;
struct kfence_slot *kf_slots;
size_t kf_page;
struct kf_range kf_private;

/*
 * The freelist: a ring of slot indices, oldest-freed first, so the slot that
 * has been free longest is reused first and a dangling pointer stays caught
 * as long as possible.  Protected by kf_lock (never taken in the fault path).
 */
static pthread_mutex_t kf_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t *kf_freelist;
static size_t kf_free_head, kf_free_count;   /* kf_lock */
static _Atomic uint8_t *kf_guard_open;       /* num_slots + 1 flags */
static _Atomic uint8_t *kf_own_mapping;      /* per slot: its data page is its own mapping */

KF_SIGSAFE uintptr_t kf_slot_page(size_t slot)
{
	return kf_pool.start + (2 * slot + 1) * kf_page;
}

KF_SIGSAFE void kf_mark_guard_open(size_t guard_index)
{
	atomic_store_explicit(&kf_guard_open[guard_index], 1, memory_order_relaxed);
}

static void kf_close_guard(size_t g)
{
	if (atomic_exchange_explicit(&kf_guard_open[g], 0, memory_order_relaxed))
		kf_os_protect(kf_pool.start + 2 * g * kf_page, kf_page, false);
}

/* === Canaries === */

/*
 * 16 bytes at a time (SSE2, or the target's vectors), 64 bytes a loop: the
 * check of a page took 3,500 instructions at 8 bytes a step, 1,600 now
 * (callgrind).  The pattern's period is 8, so a 16-aligned vector holds it
 * twice.  The whole page, as KFENCE: what costs is bringing it into the
 * cache, which checking only near the object would not spare (the check at
 * free still has to read every line a stray write may have hit).
 */
typedef uint64_t kf_vec __attribute__((vector_size(16), may_alias));
#define KF_VEC_BYTES 16

/* The canary of the 8 bytes at an 8-aligned address, as a word. */
static uint64_t kf_canary_word(void)
{
	uint64_t w = 0;
	for (int i = 0; i < 8; i++)
		w |= (uint64_t)kf_canary((uintptr_t)i) << (8 * i);
	return w;
}

static kf_vec kf_canary_vec(void)
{
	uint64_t w = kf_canary_word();
	return (kf_vec){ w, w };
}

/* The whole page at page (page-aligned) canary. */
static void kf_canary_fill(uintptr_t page)
{
	kf_vec v = kf_canary_vec();
	for (kf_vec *p = (kf_vec *)page; p < (kf_vec *)(page + kf_page); p += 4) {
		p[0] = v;
		p[1] = v;
		p[2] = v;
		p[3] = v;
	}
}

/*
 * An entry holds its slot + 1; a 0, as the fresh mapping holds everywhere,
 * is the slot of its own place, so the ring starts full (0, 1, 2...)
 * without a write at start-up.
 */
static uint32_t kf_freelist_at(size_t place)
{
	uint32_t e = kf_freelist[place];
	return e ? e - 1 : (uint32_t)place;
}

static void kf_freelist_push(uint32_t slot)
{
	kf_pool_lock();
	kf_freelist[(kf_free_head + kf_free_count) % kf_state->num_slots] = slot + 1;
	kf_free_count++;
	kf_pool_unlock();
}

static long kf_freelist_pop(void)
{
	long slot = -1;
	kf_pool_lock();
	if (kf_free_count) {
		slot = kf_freelist_at(kf_free_head);
		kf_free_head = (kf_free_head + 1) % kf_state->num_slots;
		kf_free_count--;
	}
	kf_pool_unlock();
	return slot;
}

/* A guarded allocation that did not happen: errno as kf_guarded_alloc promises. */
static void *kf_alloc_failed(int keep_errno, int err)
{
	errno = keep_errno >= 0 ? keep_errno : err;
	return NULL;
}

void *kf_guarded_alloc(size_t size, size_t align, int placement, unsigned kind, uint32_t site,
		       int keep_errno)
{
	int cache = (int)(kind & (KF_ZERO - 1));
	if (!kf_ready()) {
		return kf_alloc_failed(keep_errno, ENOMEM);
	}
	kf_check_owner();
	if (size > kf_page) {
		kf_count(KFENCE_COUNTER_SKIP_TOO_LARGE, 1);
		return kf_alloc_failed(keep_errno, ENOMEM);
	}
	if (align > kf_page) {
		kf_count(KFENCE_COUNTER_SKIP_ALIGNMENT, 1);
		return kf_alloc_failed(keep_errno, EINVAL);
	}
	KF_ENTER();
	long slot = kf_freelist_pop();
	if (slot < 0) {
		kf_count(KFENCE_COUNTER_SKIP_CAPACITY, 1);
		return kf_alloc_failed(keep_errno, ENOSPC);
	}
	bool backed = kf_slot_backed[slot];
	if (!backed) {
		kf_pool_lock();
		backed = kf_state_back_slot((size_t)slot);
		kf_pool_unlock();
	}
	if (!backed) {
		/* No room for its metadata in the state file: the slot is not used again. */
		kf_count(KFENCE_COUNTER_SKIP_MAP_FAILED, 1);
		return kf_alloc_failed(keep_errno, ENOMEM);
	}
	struct kfence_slot *m = &kf_slots[slot];
	uint32_t prev_state = atomic_exchange((_Atomic uint32_t *)&m->state, KFENCE_SLOT_BUSY);
	uintptr_t page = kf_slot_page((size_t)slot);
	/*
	 * The first use of a slot gives its data page a mapping of its own that
	 * cannot merge with the guards around it; from then on alloc and free
	 * only flip its protection, with no mapping split or merged (2.5x cheaper
	 * here than mprotect on one page in the middle of a PROT_NONE region).
	 */
	bool opened = atomic_load_explicit(&kf_own_mapping[slot], memory_order_relaxed)
			      ? kf_os_protect(page, kf_page, true) == 0
			      : kf_os_map_own_page(page, kf_page) == 0;
	if (opened)
		atomic_store_explicit(&kf_own_mapping[slot], 1, memory_order_relaxed);
	if (!opened) {
		static _Atomic bool warned;
		if (!atomic_exchange(&warned, true))
			kf_warn("mprotect of a pool page failed; such allocations go to glibc", NULL);
		kf_count(KFENCE_COUNTER_SKIP_MAP_FAILED, 1);
		atomic_store((_Atomic uint32_t *)&m->state, prev_state);
		kf_freelist_push((uint32_t)slot);
		return kf_alloc_failed(keep_errno, ENOMEM);
	}
	kf_close_guard((size_t)slot);
	kf_close_guard((size_t)slot + 1);

	if (placement == KFENCE_PLACE_RANDOM)
		placement = (kf_random() & 1) ? KFENCE_PLACE_RIGHT : KFENCE_PLACE_LEFT;
	uintptr_t addr = page;
	if (placement == KFENCE_PLACE_RIGHT) {
		size_t a = align ? align : kf_opt.align;
		addr = (page + kf_page - (size ? size : 1)) & ~(uintptr_t)(a - 1);
	}
	kf_canary_fill(page);
	if (kind & KF_ZERO)
		memset((void *)addr, 0, size);

	m->addr = addr;
	m->size = size;
	m->cache = (uint32_t)cache;
	m->alloc_tid = kf_tid();
	m->alloc_ns = kf_now_ns() - kf_state->start_ns;
	m->free_tid = 0;
	m->free_ns = 0;
	m->free_stack.depth = 0;
	m->alloc_note[0] = '\0';
	m->free_note[0] = '\0';
	kf_capture_stack(&m->alloc_stack);
	if (!site)
		site = kf_site(m->alloc_stack.depth ? m->alloc_stack.pc[0] : 0);
	kf_shadow[slot].site = site;
	kf_coverage_add(kf_shadow[slot].site, 1);
	atomic_store_explicit((_Atomic uint32_t *)&m->reported, 0, memory_order_relaxed);
	kf_slot_publish((size_t)slot, KFENCE_SLOT_ALLOCATED);
	kf_count(KFENCE_COUNTER_ALLOCS, 1);
	kf_count(KFENCE_COUNTER_ALLOCATED, 1);
	if (keep_errno >= 0)
		errno = keep_errno;  /* as if glibc had served it */
	return (void *)addr;
}

bool kf_pool_live(const void *p, size_t *size)
{
	kf_check_owner();
	struct kfence_slot *m = kf_slot_meta(kf_addr_slot((uintptr_t)p));
	/*
	 * A sweep holds a live object BUSY for a moment: wait for it (bounded,
	 * as kf_claim_live does), or realloc would take the object for a bad
	 * pointer and malloc_usable_size give 0.
	 */
	for (int tries = 0; m && m->addr == (uintptr_t)p; tries++) {
		uint32_t state = atomic_load_explicit((_Atomic uint32_t *)&m->state,
						      memory_order_acquire);
		if (state == KFENCE_SLOT_ALLOCATED && m->addr == (uintptr_t)p) {
			*size = m->size;
			return true;
		}
		if (state != KFENCE_SLOT_BUSY || tries > 100000)
			return false;
		sched_yield();
	}
	return false;
}

/* First byte in [from, to) that is not canary, scanned a byte at a time, or 0. */
static uintptr_t kf_first_bad_byte(uintptr_t from, uintptr_t to)
{
	for (uintptr_t a = from; a < to; a++)
		if (*(uint8_t *)a != kf_canary(a))
			return a;
	return 0;
}

/* First byte in [from, to) that is not canary, or 0. */
static uintptr_t kf_first_bad_canary(uintptr_t from, uintptr_t to)
{
	uintptr_t a = (from + KF_VEC_BYTES - 1) & ~(uintptr_t)(KF_VEC_BYTES - 1);
	if (a >= to)
		return kf_first_bad_byte(from, to);
	uintptr_t bad = kf_first_bad_byte(from, a);
	if (bad)
		return bad;
	kf_vec v = kf_canary_vec();
	for (; a + 4 * KF_VEC_BYTES <= to; a += 4 * KF_VEC_BYTES) {
		const kf_vec *p = (const kf_vec *)a;
		kf_vec diff = (p[0] ^ v) | (p[1] ^ v) | (p[2] ^ v) | (p[3] ^ v);
		if (diff[0] | diff[1])
			return kf_first_bad_byte(a, a + 4 * KF_VEC_BYTES);
	}
	return kf_first_bad_byte(a, to);
}

/*
 * Report changed canary bytes around the object of slot m, if any; detail
 * says who looked (NONE: its free, SWEEP: a check of live objects, which
 * holds the slot BUSY).  True if it handed the slot back (ALLOCATED) itself.
 */
static bool kf_check_canary(long slot, const struct kfence_slot *m, int detail)
{
	uintptr_t page = kf_slot_page((size_t)slot);
	uintptr_t lo = m->addr, hi = m->addr + m->size;
	uintptr_t bad = kf_first_bad_canary(page, lo);
	if (!bad)
		bad = kf_first_bad_canary(hi, page + kf_page);
	if (!bad)
		return false;
	uint8_t bytes[16];
	uint32_t mask = 0;
	for (int i = 0; i < 16; i++) {
		uintptr_t a = bad + (uintptr_t)i;
		bool outside = a < lo || a >= hi;
		bytes[i] = a < page + kf_page ? *(uint8_t *)a : 0;
		if (a < page + kf_page && outside && bytes[i] != kf_canary(a))
			mask |= 1u << i;
	}
	struct kf_report_in in = {
		.kind = KFENCE_BUG_CORRUPTION, .access = KFENCE_ACCESS_NONE,
		.addr = bad, .slot = slot, .stack = detail ? &m->alloc_stack : &m->free_stack,
		.corrupted = bytes, .corrupted_mask = mask, .detail = detail,
	};
	if (detail != KFENCE_DETAIL_SWEEP) {
		kf_report(&in);
		return false;
	}
	/*
	 * A copy of the live object is reported, the slot handed back first:
	 * the report may wait long on stderr, and a free of the object waits
	 * for the slot only so long, then calls itself invalid.
	 */
	struct kfence_slot live = *m;
	live.state = KFENCE_SLOT_ALLOCATED;
	in.stack = &live.alloc_stack;
	atomic_store_explicit((_Atomic uint32_t *)&m->state, KFENCE_SLOT_ALLOCATED,
			      memory_order_release);
	kf_report_object(&in, &live);
	return true;
}

/*
 * A free the pool cannot take: p is no live object's start.  Name the
 * object it belongs to (the nearer neighbour of a guard page, as a fault
 * there would) and why, as the fault handler's diagnosis sees it.
 */
static void kf_report_invalid_free(const void *p, uintptr_t caller)
{
	struct kfence_finding f;
	kfence_diagnose(kf_state, (uintptr_t)p, &f);
	struct kfence_stack st = { .depth = 1, .pc = { caller } };
	if (kf_unwind_safe(caller))
		kf_capture_stack(&st);
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID_FREE, .access = KFENCE_ACCESS_NONE,
		.addr = (uintptr_t)p, .slot = f.slot, .stack = &st, .detail = KFENCE_DETAIL_NO_OBJECT,
	};
	uintptr_t a = (uintptr_t)p, lo = f.object_addr, hi = lo + f.object_size;
	if (f.slot < 0) {
		;  /* a data page no object is in, or a guard with no neighbour to name */
	} else if (f.guard >= 0) {
		in.detail = KFENCE_DETAIL_GUARD;
		in.distance = f.distance;
	} else if (f.slot_state == KFENCE_SLOT_FREED) {
		in.detail = KFENCE_DETAIL_DOUBLE_FREE;
	} else if (a > lo && a < hi) {
		in.detail = KFENCE_DETAIL_NOT_START;
		in.value = a - lo;
	} else {
		/* In the object's page, outside it: KFENCE's distances, as for a guard. */
		in.detail = KFENCE_DETAIL_GUARD;
		in.distance = a < lo ? -(int64_t)(lo - a) : (int64_t)(a - lo);
	}
	kf_report(&in);
}

/*
 * Claim slot m's live object at p (ALLOCATED to BUSY).  A sweep holds live
 * objects BUSY for a moment: wait for it (bounded: the holder could be a
 * thread that never comes back), not blame the free.
 */
static bool kf_claim_live(struct kfence_slot *m, uintptr_t p)
{
	for (int tries = 0; m && m->addr == p; tries++) {
		uint32_t expected = KFENCE_SLOT_ALLOCATED;
		if (atomic_compare_exchange_strong((_Atomic uint32_t *)&m->state, &expected,
						   KFENCE_SLOT_BUSY))
			return true;
		if (expected != KFENCE_SLOT_BUSY || tries > 100000)
			return false;
		sched_yield();
	}
	return false;
}

/*
 * A program's own operator new that calls malloc (or its own delete that
 * calls free) is invisible to dlsym when the executable does not export
 * it: a malloc'd object freed by delete, or a new'd one by free, is then no
 * mismatch if the malloc or free was called from such a function.
 */
static bool kf_own_cxx_wrapper(const struct kfence_slot *m, int alloc)
{
	if (alloc == KFENCE_FAMILY_MALLOC)
		return m->alloc_stack.depth && kf_function_named(m->alloc_stack.pc[0], "_Zn");
	return m->free_stack.depth && kf_function_named(m->free_stack.pc[0], "_Zd");
}

void kf_pool_free(void *p, uintptr_t caller, int family, size_t size)
{
	/* free() keeps errno; so does this, its callers' last call (one frame less to unwind). */
	int saved = errno;
	kf_check_owner();
	KF_ENTER();
	long slot = kf_addr_slot((uintptr_t)p);
	struct kfence_slot *m = kf_slot_meta(slot);
	/* The CAS makes exactly one of two racing frees the real one. */
	if (!kf_claim_live(m, (uintptr_t)p)) {
		kf_report_invalid_free(p, caller);
		errno = saved;
		return;
	}
	m->free_tid = kf_tid();
	m->free_ns = kf_now_ns() - kf_state->start_ns;
	if (kf_unwind_safe(caller))
		kf_capture_stack(&m->free_stack);
	else
		m->free_stack = (struct kfence_stack){ .depth = 1, .pc = { caller } };
	kf_check_canary(slot, m, KFENCE_DETAIL_NONE);
	/* The wrong function freed it: said, and then freed all the same. */
	int alloc = kfence_cache_family((int)m->cache);
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID_FREE, .access = KFENCE_ACCESS_NONE, .addr = (uintptr_t)p,
		.slot = slot, .stack = &m->free_stack, .dealloc = family, .value = size,
	};
	if (kf_family_mismatch(alloc, family) && !kf_own_cxx_wrapper(m, alloc))
		in.detail = KFENCE_DETAIL_MISMATCH;
	else if (size && size != m->size && kf_opt.alloc_dealloc_mismatch)
		in.detail = KFENCE_DETAIL_SIZE_MISMATCH;
	if (in.detail)
		kf_report(&in);

	uintptr_t page = kf_slot_page((size_t)slot);
	if (kf_os_discard(page, kf_page) != 0)
		kf_count(KFENCE_COUNTER_SKIP_MAP_FAILED, 1);
	kf_coverage_add(kf_shadow[slot].site, -1);
	kf_shadow[slot].site = 0;
	kf_slot_publish((size_t)slot, KFENCE_SLOT_FREED);
	kf_count(KFENCE_COUNTER_FREES, 1);
	kf_count(KFENCE_COUNTER_ALLOCATED, -1);
	kf_freelist_push((uint32_t)slot);
	errno = saved;
}

void kf_pool_sweep(void)
{
	KF_ENTER();
	for (size_t i = 0; i < kf_state->num_slots; i++) {
		struct kfence_slot *m = kf_slot_meta((long)i);
		uint32_t expected = KFENCE_SLOT_ALLOCATED;
		/* Held BUSY, the object cannot be freed (and its page closed) under us. */
		if (!m || !atomic_compare_exchange_strong((_Atomic uint32_t *)&m->state, &expected,
							  KFENCE_SLOT_BUSY))
			continue;
		if (!kf_check_canary((long)i, m, KFENCE_DETAIL_SWEEP))
			atomic_store_explicit((_Atomic uint32_t *)&m->state, KFENCE_SLOT_ALLOCATED,
					      memory_order_release);
	}
	kf_count(KFENCE_COUNTER_SWEEPS, 1);
}

void kf_sweep_if_asked(const struct kfence_control *c)
{
	static _Atomic uint32_t done;  /* the last request served */
	uint32_t asked = *(volatile const uint32_t *)&c->canary_sweep;
	uint32_t seen = atomic_load_explicit(&done, memory_order_relaxed);
	if (KF_LIKELY(asked == seen) ||
	    !atomic_compare_exchange_strong(&done, &seen, asked))
		return;
	kf_pool_sweep();
}

/*
 * The pool's private records, in this order: backed slots, open guards, own
 * mappings, the freelist, then the shadows.  The flags and the freelist come
 * first so that setting them up touches one page (the shadows' pages are
 * touched as slots are used): a first write to a page is a page fault, and
 * those were a third of the start-up cost here.
 */
static size_t kf_private_layout(size_t n, size_t *freelist, size_t *shadows)
{
	size_t flags = n + (n + 1) + n;  /* backed, open guards, own mappings */
	*freelist = (flags + 7) & ~(size_t)7;
	*shadows = (*freelist + n * sizeof(uint32_t) + 7) & ~(size_t)7;
	return *shadows + n * sizeof(struct kf_shadow);
}

/* Every slot free and writable, before the pool is published; priv is zeroed memory. */
void kf_pool_setup(struct kfence_state *s, void *priv, size_t priv_size)
{
	size_t n = s->num_slots, freelist, shadows;
	kf_private_layout(n, &freelist, &shadows);
	kf_private = (struct kf_range){ (uintptr_t)priv, (uintptr_t)priv + priv_size };
	kf_slot_backed = priv;
	kf_guard_open = (_Atomic uint8_t *)(kf_slot_backed + n);
	kf_own_mapping = kf_guard_open + n + 1;
	kf_freelist = (uint32_t *)((char *)priv + freelist);
	kf_shadow = (struct kf_shadow *)((char *)priv + shadows);
	memset(kf_slot_backed, 1, n);  /* private memory: every slot can be written */
	kf_free_head = 0;
	kf_free_count = n;  /* every entry 0: slot i at place i (kf_freelist_at) */
	kf_slots = (struct kfence_slot *)((char *)s + s->slots_offset);
	kf_state = s;
}

size_t kf_pool_private_size(size_t n)
{
	size_t freelist, shadows;
	return kf_private_layout(n, &freelist, &shadows);
}

void kf_pool_lock(void)
{
	pthread_mutex_lock(&kf_lock);
}

void kf_pool_unlock(void)
{
	pthread_mutex_unlock(&kf_lock);
}

KF_SIGSAFE void kf_pool_lock_reset(void)
{
	kf_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
}
