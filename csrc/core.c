/*
 * The pool, the sampling gate, start-up and the public interface.
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
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kf_internal.h"

/* === Global state === */

struct kf_pool_range kf_pool;
KF_TLS struct kf_thread kf_self;
struct kfence_state *kf_state;
struct kfence_slot *kf_slots;
size_t kf_page;
_Atomic int kf_init_state;
uintptr_t kf_self_lo, kf_self_hi;
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
static bool kf_interposing;

/*
 * Which process the state belongs to.  It lives in a page the kernel zeroes
 * in a child (MADV_WIPEONFORK), so a process made by fork() or by a raw
 * clone() (which runs no atfork handler) sees owned == 0 at its first slow
 * path and takes the state for its own before it writes any
 * (kf_check_owner).  A vfork child shares the page: pid, the process whose
 * memory this is, tells it apart.
 */
static struct kf_owner kf_owner_fallback = { 1, 0 };

bool kf_vfork_child(void)
{
	uint32_t pid = kf_owner->pid;
	return pid && pid != (uint32_t)getpid();
}
volatile struct kf_owner *kf_owner = &kf_owner_fallback;

/* Time gate: the next time a sample may be taken, and the burst left. */
static _Atomic uint64_t kf_next_sample_ns;
static _Atomic int64_t kf_burst_left;

uint64_t kf_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t kf_tid(void)
{
	if (KF_UNLIKELY(!kf_self.tid))
		kf_self.tid = kf_os_gettid();
	return kf_self.tid;
}

static uint64_t kf_random(void)
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

uintptr_t kf_slot_page(size_t slot)
{
	return kf_pool.start + (2 * slot + 1) * kf_page;
}

/* Other modules whose frames are ours too (the Python hooks): kfence_register_internal(). */
static struct {
	uintptr_t lo, hi;
} kf_internal[4];
static _Atomic int kf_internal_count;

bool kf_in_self(uintptr_t pc)
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

bool kf_unwind_safe(uintptr_t caller)
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
}

void kf_mark_guard_open(size_t guard_index)
{
	atomic_store_explicit(&kf_guard_open[guard_index], 1, memory_order_relaxed);
}

static void kf_close_guard(size_t g)
{
	if (atomic_exchange_explicit(&kf_guard_open[g], 0, memory_order_relaxed))
		kf_os_protect(kf_pool.start + 2 * g * kf_page, kf_page, false);
}

/* === Allocation Gate === */

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
	int st = atomic_load_explicit(&kf_init_state, memory_order_acquire);
	if (KF_UNLIKELY(st != 2)) {
		/* Not started yet: look again soon.  Off for good: look rarely. */
		*countdown = st == -1 ? INT32_MAX : 1;
		return NULL;
	}
	if (kf_self.in_lib || !kf_unwind_safe(caller)) {
		/* malloc from inside the library (dladdr) or the unwinder: straight to glibc. */
		*countdown = 1;
		return NULL;
	}
	if (!kf_check_owner()) {
		*countdown = 1;  /* a vfork child: the memory, and so the state, is its parent's */
		return NULL;
	}
	const struct kfence_control *c = &kf_state->control;
	uint32_t rate = *(volatile uint32_t *)&c->sample_rate;
	if (!*(volatile uint32_t *)&c->enabled) {
		*countdown = KF_IDLE_PERIOD;
		return NULL;
	}
	if (rate) {
		*countdown = kf_rate_countdown(rate);
	} else {
		*countdown = KF_CLOCK_CHECK_PERIOD;
		if (!kf_time_gate(c, countdown))
			return NULL;
	}
	int saved = errno;
	void *p = kf_guarded_alloc(size, align, (int)kf_opt.placement, cache, zero);
	errno = saved;
	return p;
}

void *kfence_sample(int32_t *countdown, size_t size, size_t align, int cache, int zero)
{
	if (cache < 0 || cache >= KFENCE_CACHE_KINDS || (align & (align - 1)))
		return NULL;
	return kf_sample_alloc(countdown, size, align, cache, zero != 0, 0);
}

int kfence_is_object_start(const void *ptr)
{
	if (!kf_is_pool_address(ptr))
		return 0;
	const struct kfence_slot *m = kf_slot_meta(kf_addr_slot((uintptr_t)ptr));
	uint32_t s = m ? atomic_load_explicit((_Atomic uint32_t *)&m->state, memory_order_acquire) : 0;
	return (s == KFENCE_SLOT_ALLOCATED || s == KFENCE_SLOT_FREED) && m->addr == (uintptr_t)ptr;
}

int kfence_object_size(const void *ptr, size_t *size)
{
	return kf_is_pool_address(ptr) && kf_pool_live(ptr, size) ? 0 : -1;
}

/* === Pool === */

/* The 8-byte canary word for an 8-aligned address. */
static uint64_t kf_canary_word(void)
{
	uint64_t w = 0;
	for (int i = 0; i < 8; i++)
		w |= (uint64_t)kf_canary((uintptr_t)i) << (8 * i);
	return w;
}


static void kf_freelist_push(uint32_t slot)
{
	pthread_mutex_lock(&kf_lock);
	kf_freelist[(kf_free_head + kf_free_count) % kf_state->num_slots] = slot;
	kf_free_count++;
	pthread_mutex_unlock(&kf_lock);
}

static long kf_freelist_pop(void)
{
	long slot = -1;
	pthread_mutex_lock(&kf_lock);
	if (kf_free_count) {
		slot = kf_freelist[kf_free_head];
		kf_free_head = (kf_free_head + 1) % kf_state->num_slots;
		kf_free_count--;
	}
	pthread_mutex_unlock(&kf_lock);
	return slot;
}

void *kf_guarded_alloc(size_t size, size_t align, int placement, int cache, bool zero)
{
	if (atomic_load_explicit(&kf_init_state, memory_order_acquire) != 2) {
		errno = ENOMEM;
		return NULL;
	}
	kf_check_owner();
	if (size > kf_page) {
		kf_count(KFENCE_COUNTER_SKIP_TOO_LARGE, 1);
		errno = ENOMEM;
		return NULL;
	}
	if (align > kf_page) {
		kf_count(KFENCE_COUNTER_SKIP_ALIGNMENT, 1);
		errno = EINVAL;
		return NULL;
	}
	bool was_in_lib = kf_self.in_lib;
	kf_self.in_lib = true;
	long slot = kf_freelist_pop();
	if (slot < 0) {
		kf_self.in_lib = was_in_lib;
		kf_count(KFENCE_COUNTER_SKIP_CAPACITY, 1);
		errno = ENOSPC;
		return NULL;
	}
	bool backed = kf_slot_backed[slot];
	if (!backed) {
		pthread_mutex_lock(&kf_lock);
		backed = kf_state_back_slot((size_t)slot);
		pthread_mutex_unlock(&kf_lock);
	}
	if (!backed) {
		/* No room for its metadata in the state file: the slot is not used again. */
		kf_self.in_lib = was_in_lib;
		kf_count(KFENCE_COUNTER_SKIP_MAP_FAILED, 1);
		errno = ENOMEM;
		return NULL;
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
		kf_self.in_lib = was_in_lib;
		errno = ENOMEM;
		return NULL;
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
	uint64_t word = kf_canary_word();
	for (uint64_t *w = (uint64_t *)page; w < (uint64_t *)(page + kf_page); w++)
		*w = word;
	if (zero)
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
	atomic_store_explicit((_Atomic uint32_t *)&m->reported, 0, memory_order_relaxed);
	kf_slot_publish((size_t)slot, KFENCE_SLOT_ALLOCATED);
	kf_count(KFENCE_COUNTER_ALLOCS, 1);
	kf_count(KFENCE_COUNTER_ALLOCATED, 1);
	kf_self.in_lib = was_in_lib;
	return (void *)addr;
}

bool kf_pool_live(const void *p, size_t *size)
{
	kf_check_owner();
	struct kfence_slot *m = kf_slot_meta(kf_addr_slot((uintptr_t)p));
	if (!m)
		return false;
	if (atomic_load_explicit((_Atomic uint32_t *)&m->state, memory_order_acquire) !=
		    KFENCE_SLOT_ALLOCATED ||
	    m->addr != (uintptr_t)p)
		return false;
	*size = m->size;
	return true;
}

/* First byte in [from, to) that is not canary, or 0. */
static uintptr_t kf_first_bad_canary(uintptr_t from, uintptr_t to)
{
	uint64_t word = kf_canary_word();
	uintptr_t a = from;
	for (; a < to && (a & 7); a++)
		if (*(uint8_t *)a != kf_canary(a))
			return a;
	for (; a + 8 <= to; a += 8)
		if (*(uint64_t *)a != word)
			break;
	for (; a < to; a++)
		if (*(uint8_t *)a != kf_canary(a))
			return a;
	return 0;
}

/* Report changed canary bytes around the object of slot m, if any. */
static void kf_check_canary(long slot, const struct kfence_slot *m)
{
	uintptr_t page = kf_slot_page((size_t)slot);
	uintptr_t lo = m->addr, hi = m->addr + m->size;
	uintptr_t bad = kf_first_bad_canary(page, lo);
	if (!bad)
		bad = kf_first_bad_canary(hi, page + kf_page);
	if (!bad)
		return;
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
		.addr = bad, .slot = slot, .stack = &m->free_stack,
		.corrupted = bytes, .corrupted_mask = mask,
	};
	kf_report(&in);
}

static void kf_report_invalid_free(const void *p, uintptr_t caller)
{
	long slot = kf_addr_slot((uintptr_t)p);
	if (!kf_slot_meta(slot) ||
	    atomic_load((_Atomic uint32_t *)&kf_slots[slot].state) == KFENCE_SLOT_UNUSED)
		slot = -1;
	struct kfence_stack st = { .depth = 1, .pc = { caller } };
	if (kf_unwind_safe(caller))
		kf_capture_stack(&st);
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID_FREE, .access = KFENCE_ACCESS_NONE,
		.addr = (uintptr_t)p, .slot = slot, .stack = &st,
	};
	kf_report(&in);
}

void kf_pool_free(void *p, uintptr_t caller)
{
	kf_check_owner();
	bool was_in_lib = kf_self.in_lib;
	kf_self.in_lib = true;
	long slot = kf_addr_slot((uintptr_t)p);
	uint32_t expected = KFENCE_SLOT_ALLOCATED;
	struct kfence_slot *m = kf_slot_meta(slot);
	/* The CAS makes exactly one of two racing frees the real one. */
	if (!m || m->addr != (uintptr_t)p ||
	    !atomic_compare_exchange_strong((_Atomic uint32_t *)&m->state, &expected,
					    KFENCE_SLOT_BUSY)) {
		kf_report_invalid_free(p, caller);
		kf_self.in_lib = was_in_lib;
		return;
	}
	m->free_tid = kf_tid();
	m->free_ns = kf_now_ns() - kf_state->start_ns;
	if (kf_unwind_safe(caller))
		kf_capture_stack(&m->free_stack);
	else
		m->free_stack = (struct kfence_stack){ .depth = 1, .pc = { caller } };
	kf_check_canary(slot, m);

	uintptr_t page = kf_slot_page((size_t)slot);
	if (kf_os_discard(page, kf_page) != 0)
		kf_count(KFENCE_COUNTER_SKIP_MAP_FAILED, 1);
	kf_slot_publish((size_t)slot, KFENCE_SLOT_FREED);
	kf_count(KFENCE_COUNTER_FREES, 1);
	kf_count(KFENCE_COUNTER_ALLOCATED, -1);
	kf_freelist_push((uint32_t)slot);
	kf_self.in_lib = was_in_lib;
}

/* === Start-up === */

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
	uintptr_t range[3] = { (uintptr_t)addr, 0, 0 };
	if (!dl_iterate_phdr(kf_find_module, range))
		return -1;
	int rc = -1;
	pthread_mutex_lock(&kf_lock);  /* registrations are rare: one at a time */
	int n = atomic_load(&kf_internal_count);
	if (n < 4) {
		kf_internal[n].lo = range[1];
		kf_internal[n].hi = range[2];
		atomic_store_explicit(&kf_internal_count, n + 1, memory_order_release);
		rc = 0;
	}
	pthread_mutex_unlock(&kf_lock);
	return rc;
}

static void kf_atfork_prepare(void)
{
	pthread_mutex_lock(&kf_lock);
}

static void kf_atfork_parent(void)
{
	pthread_mutex_unlock(&kf_lock);
}

/*
 * A new process (fork, or raw clone) takes the state for its own: a file of
 * its own with a copy of the slots in use (the objects it inherited), or a
 * private copy; its own counters and reports start from zero.  False in a
 * vfork child of a process that has not taken its own yet: that is the
 * parent's to do, and the child writes nothing.
 */
bool kf_become_owner(void)
{
	/* The pid whose thread is at it: one left by a parent (fork mid-way) is stale. */
	static _Atomic uint32_t adopting;
	uint32_t me = (uint32_t)getpid();
	if (kf_owner->pid && kf_owner->pid != me)
		return false;
	sigset_t saved;
	kf_os_block_signals(&saved);  /* a handler on this thread must not wait for us */
	for (;;) {
		uint32_t cur = 0;
		if (atomic_compare_exchange_strong(&adopting, &cur, me) ||
		    (cur != me && atomic_compare_exchange_strong(&adopting, &cur, me)))
			break;
		if (kf_owner->owned)
			break;
		sched_yield();  /* another thread of this process is at it */
	}
	if (atomic_load(&adopting) != me || kf_owner->owned) {
		if (atomic_load(&adopting) == me)
			atomic_store(&adopting, 0);
		kf_os_restore_signals(&saved);
		return true;
	}
	bool was_in_lib = kf_self.in_lib;
	kf_self.in_lib = true;
	/* After a raw clone the lock may be held by a thread this process does not have. */
	kf_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
	kf_report_atfork_child();
	kf_self.tid = 0;
	kf_self.rng = 0;
	struct kfence_state *s = kf_state;
	int err = kf_state_shared ? kf_state_publish(s, kf_opt.state_dir) : -1;
	if (err > 0) {
		kf_state_privatize(s);
		kf_warn("cannot publish the state of a new process in ", kf_opt.state_dir, ": ",
			strerror(err), "; keeping it private", NULL);
	}
	s->pid = me;
	memset(s->counters, 0, sizeof(s->counters));
	/* The objects it inherited are its own; the parent's count may have moved on. */
	for (size_t i = 0; i < s->num_slots; i++)
		s->counters[KFENCE_COUNTER_ALLOCATED] += kf_shadow[i].state == KFENCE_SLOT_ALLOCATED;
	/* A new file's ring is empty already (and touching it costs a page fault a page). */
	struct kfence_report *r = (struct kfence_report *)((char *)s + s->reports_offset);
	for (uint32_t i = 0; err && i < s->max_reports; i++)
		r[i].sequence = 0;
	s->reports_written = 0;
	kf_owner->pid = me;
	kf_owner->owned = 1;
	kf_self.in_lib = was_in_lib;
	atomic_store(&adopting, 0);
	kf_os_restore_signals(&saved);
	return true;
}

static void kf_atfork_child(void)
{
	pthread_mutex_unlock(&kf_lock);
	kf_self.tid = 0;
	kf_self.rng = 0;
	/*
	 * The state is taken lazily, at the child's first slow path (a child
	 * that execs or exits at once never pays for one); kf_shadow keeps what
	 * the child's memory holds until then.  The page is wiped already where
	 * MADV_WIPEONFORK works; owned = 0 is for the kernels without it.
	 */
	kf_owner->owned = 0;
	kf_owner->pid = (uint32_t)getpid();
}

/* The exit status a process leaves with: exitcode when it reported a bug itself. */
static int kf_exit_status(int status)
{
	if (atomic_load(&kf_init_state) != 2 || !kf_owner->owned ||
	    kf_state->pid != (uint32_t)getpid())  /* a vfork child: its parent's state */
		return status;
	return kf_state->counters[KFENCE_COUNTER_BUGS] ? (int)kf_opt.exitcode : status;
}

typedef void kf_exit_fn(int);
static kf_exit_fn *kf_libc_exit, *kf_libc_quick_exit;

/* _exit and _Exit skip exit handlers (and so kf_on_exit): the status is set here. */
void _exit(int status)
{
	status = kf_exit_status(status);
	if (kf_libc_exit)
		kf_libc_exit(status);
	for (;;)
		syscall(SYS_exit_group, status);
}

void _Exit(int status) __attribute__((alias("_exit"), noreturn));

void quick_exit(int status)
{
	status = kf_exit_status(status);
	if (kf_libc_quick_exit)
		kf_libc_quick_exit(status);
	_exit(status);
}

static int (*kf_libc_prctl)(int, unsigned long, unsigned long, unsigned long, unsigned long);

/*
 * A program about to sandbox itself with seccomp (no_new_privs comes first)
 * may then forbid the system calls that taking a state of its own, or
 * growing its file, would make later: both are done now.
 */
int prctl(int option, ...)
{
	va_list ap;
	va_start(ap, option);
	unsigned long a2 = va_arg(ap, unsigned long), a3 = va_arg(ap, unsigned long);
	unsigned long a4 = va_arg(ap, unsigned long), a5 = va_arg(ap, unsigned long);
	va_end(ap);
	if ((option == PR_SET_SECCOMP || option == PR_SET_NO_NEW_PRIVS) &&
	    atomic_load(&kf_init_state) == 2 && kf_check_owner()) {
		pthread_mutex_lock(&kf_lock);
		kf_state_seal();
		pthread_mutex_unlock(&kf_lock);
	}
	if (kf_libc_prctl)
		return kf_libc_prctl(option, a2, a3, a4, a5);
	return (int)syscall(SYS_prctl, option, a2, a3, a4, a5);
}

static void kf_on_exit(int status, void *arg)
{
	(void)status;
	(void)arg;
	if (atomic_load(&kf_init_state) != 2)
		return;
	kf_self.in_lib = true;
	/* Only a process that touched its state has bugs of its own to count. */
	if (kf_opt.leak_check && kf_check_owner())
		kf_leak_check();
	int code = kf_exit_status(0);
	if (code) {
		/* We run after every other exit handler; stdio is flushed after us. */
		fflush(NULL);
		_exit(code);
	}
	kf_self.in_lib = false;
}

/* Slots the pool may have: every slot can cost two mappings, and the program needs its own. */
static size_t kf_cap_slots(size_t want)
{
	long maps = kf_os_max_map_count();
	long budget = maps > 32768 ? maps - 16384 : maps / 2;
	size_t cap = budget > 3 ? (size_t)(budget - 1) / 2 : 1;
	if (want > cap) {
		char n[24];
		struct kf_buf b = { n, 0, sizeof(n) - 1 };
		kf_buf_dec(&b, cap);
		n[b.len] = '\0';
		kf_warn("num_objects capped to ", n, " by vm.max_map_count", NULL);
		return cap;
	}
	return want;
}

static int kf_start(const char *options, const char *origin)
{
	kf_page = (size_t)sysconf(_SC_PAGESIZE);
	kf_options_defaults();
	kf_options_parse(options, origin);
	if (!kf_opt.enabled)
		return -1;

	size_t n = kf_cap_slots(kf_opt.num_objects);
	size_t pool_size = (2 * n + 1) * kf_page;
	void *pool = kf_os_reserve(pool_size);
	size_t state_size = sizeof(struct kfence_state) + n * sizeof(struct kfence_slot) +
			    KFENCE_MAX_REPORTS * sizeof(struct kfence_report);
	state_size = (state_size + kf_page - 1) & ~(kf_page - 1);
	/* Private to this process: shadows, freelist, open guards, own mappings, backed slots. */
	size_t priv_size = n * sizeof(struct kf_shadow) + n * sizeof(uint32_t) + (n + 1) + n + n;
	struct kfence_state *s = pool ? kf_os_map(state_size) : NULL;
	void *priv = s ? kf_os_map(priv_size) : NULL;
	if (!priv) {
		kf_warn("cannot map the pool; running without detection", NULL);
		if (s)
			kf_os_unmap(s, state_size);
		if (pool)
			kf_os_unmap(pool, pool_size);
		return -1;
	}

	memcpy(s->magic, "KFENCE\0\0", 8);
	s->version = KFENCE_STATE_VERSION;
	s->header_size = sizeof(struct kfence_state);
	s->slot_size = sizeof(struct kfence_slot);
	s->report_size = sizeof(struct kfence_report);
	s->num_slots = (uint32_t)n;
	s->max_reports = KFENCE_MAX_REPORTS;
	s->total_size = state_size;
	s->slots_offset = sizeof(struct kfence_state);
	s->reports_offset = sizeof(struct kfence_state) + n * sizeof(struct kfence_slot);
	s->pid = (uint32_t)getpid();
	s->page_size = (uint32_t)kf_page;
	s->pool_start = (uintptr_t)pool;
	s->pool_size = pool_size;
	s->start_ns = kf_now_ns();
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	s->start_realtime_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
#define KFENCE_CONTROL_RUNTIME(name) s->control.name = (uint32_t)kf_opt.name;
#define KFENCE_CONTROL_START(name)
#define KF_OPTION(type, name, def, min, max, when, desc) KFENCE_CONTROL_##when(name)
#include "options.inc"
#undef KF_OPTION

	kf_shadow = priv;
	kf_private = (struct kf_range){ (uintptr_t)priv, (uintptr_t)priv + priv_size };
	kf_freelist = (uint32_t *)(kf_shadow + n);
	kf_guard_open = (_Atomic uint8_t *)(kf_freelist + n);
	kf_own_mapping = kf_guard_open + n + 1;
	kf_slot_backed = (uint8_t *)(kf_own_mapping + n);
	memset(kf_slot_backed, 1, n);  /* private memory: every slot can be written */
	for (size_t i = 0; i < n; i++)
		kf_freelist[i] = (uint32_t)i;
	kf_free_head = 0;
	kf_free_count = n;
	kf_slots = (struct kfence_slot *)((char *)s + s->slots_offset);
	kf_state = s;
	if (kf_opt.state_dir[0]) {
		const char *why = kf_os_prepare_state_dir(kf_opt.state_dir);
		/* Absolute: a child publishes after the program may have changed directory. */
		char abs[PATH_MAX];
		if (!why && realpath(kf_opt.state_dir, abs) && strlen(abs) < sizeof(kf_opt.state_dir))
			strcpy(kf_opt.state_dir, abs);
		int err = why ? 0 : kf_state_publish(s, kf_opt.state_dir);
		if (why || err)
			kf_warn("cannot publish the state in ", kf_opt.state_dir, ": ",
				why ? why : strerror(err), "; keeping it private", NULL);
	}
	/* One page the kernel zeroes in a child: see kf_owner. */
	struct kf_owner *token = kf_os_map(kf_page);
	if (token && madvise(token, kf_page, MADV_WIPEONFORK) == 0) {
		token->owned = 1;
		token->pid = (uint32_t)getpid();
		kf_owner = token;
	} else if (token) {
		kf_os_unmap(token, kf_page);  /* old kernel: fork() is still seen by atfork */
	}

	/* The unwinder loads libgcc_s and allocates on first use: not in a fault. */
	void *warm[4];
	backtrace(warm, 4);
	dl_iterate_phdr(kf_find_unwinder, NULL);
	kf_resolve_libc();
	kf_libc_exit = (kf_exit_fn *)dlsym(RTLD_NEXT, "_exit");
	kf_libc_quick_exit = (kf_exit_fn *)dlsym(RTLD_NEXT, "quick_exit");
	kf_libc_prctl = (int (*)(int, unsigned long, unsigned long, unsigned long, unsigned long))
		dlsym(RTLD_NEXT, "prctl");
	uintptr_t self_range[3] = { (uintptr_t)&kf_start, 0, 0 };
	dl_iterate_phdr(kf_find_module, self_range);
	kf_self_lo = self_range[1];
	kf_self_hi = self_range[2];

	if (kf_install_fault_handler() != 0) {
		kf_warn("cannot install the SIGSEGV handler; running without detection", NULL);
		return -1;
	}
	pthread_atfork(kf_atfork_prepare, kf_atfork_parent, kf_atfork_child);
	on_exit(kf_on_exit, NULL);

	/* Publish the pool last: from here on free() recognises its pointers. */
	kf_pool.size = pool_size;
	kf_pool.start = (uintptr_t)pool;
	return 0;
}

static int kf_init(const char *options, const char *origin)
{
	int expected = 0;
	if (!atomic_compare_exchange_strong(&kf_init_state, &expected, 1)) {
		while (expected == 1)  /* another thread is starting it */
			expected = atomic_load(&kf_init_state);
		return expected == 2 ? 0 : -1;
	}
	bool was_in_lib = kf_self.in_lib;
	kf_self.in_lib = true;
	int rc = kf_start(options, origin);
	atomic_store_explicit(&kf_init_state, rc == 0 ? 2 : -1, memory_order_release);
	kf_self.in_lib = was_in_lib;
	kf_self.countdown = 0;
	return rc;
}

__attribute__((constructor)) static void kf_constructor(void)
{
	kf_interposing = kf_detect_interposing();
	/* Loaded as a plain library (the Python module): wait for kfence_init(). */
	if (kf_interposing)
		kf_init(getenv("KFENCE_OPTIONS"), "KFENCE_OPTIONS");
}

/* === Public interface === */

int kfence_init(const char *options)
{
	if (options)
		return kf_init(options, "kfence_init()");
	return kf_init(getenv("KFENCE_OPTIONS"), "KFENCE_OPTIONS");
}

int kfence_is_initialized(void)
{
	return atomic_load(&kf_init_state) == 2;
}

int kfence_is_interposing(void)
{
	return kf_interposing;
}

struct kfence_state *kfence_state(void)
{
	return atomic_load(&kf_init_state) == 2 ? kf_state : NULL;
}

void *kfence_alloc(size_t size, size_t align, int placement, int zero, int cache)
{
	if (size == 0 || (align & (align - 1)) || placement < 0 || placement > 2 ||
	    cache < 0 || cache >= KFENCE_CACHE_KINDS) {
		errno = EINVAL;
		return NULL;
	}
	return kf_guarded_alloc(size, align, placement, cache, zero != 0);
}

void kfence_free(void *ptr)
{
	extern void free(void *);
	if (kf_is_pool_address(ptr))
		kf_pool_free(ptr, (uintptr_t)__builtin_return_address(0));
	else
		free(ptr);
}

int kfence_annotate(const void *ptr, int which, const char *text)
{
	size_t size;
	if (!text || !kf_is_pool_address(ptr) || !kf_pool_live(ptr, &size) || which < 0 || which > 1)
		return -1;
	struct kfence_slot *m = &kf_slots[kf_addr_slot((uintptr_t)ptr)];
	char *note = which ? m->free_note : m->alloc_note;
	size_t n = strlen(text);
	if (n >= sizeof(m->alloc_note))
		n = sizeof(m->alloc_note) - 1;
	memcpy(note, text, n);
	note[n] = '\0';
	return 0;
}

int kfence_is_pool_address(const void *ptr)
{
	return kf_is_pool_address(ptr);
}
