/*
 * The public interface (kfence.h) and the name tables of the lists in
 * kfence_state.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kf_internal.h"

/* Written once, in kfence_py/__init__.py: setup.py passes it to the compiler. */
#ifndef KF_VERSION
#error "KF_VERSION comes from setup.py (python setup.py build_ext, or pip install)"
#endif

_Static_assert(sizeof(struct kfence_stack) == 8 + 8 * KFENCE_STACK_MAX, "stack layout");
_Static_assert(sizeof(struct kfence_slot) == 56 + 2 * sizeof(struct kfence_stack) +
		       2 * KFENCE_NOTE_SIZE, "slot layout");
_Static_assert(sizeof(struct kfence_state) == 328, "state header layout");
_Static_assert(sizeof(struct kfence_module) == 40 + KFENCE_BUILD_ID_MAX, "module layout");
_Static_assert(sizeof(struct kfence_control) <= sizeof(((struct kfence_state *)0)->control_room),
	       "more RUNTIME options than KFENCE_CONTROL_SLOTS");
_Static_assert((int)KFENCE_COUNTER_COUNT <= (int)KFENCE_COUNTER_SLOTS, "counters[] too small");

/* === Names, from the lists of kfence_state.h === */

#define KF_NAME_OF(id, name, ...) name,
static const char *const kf_slot_state_names[] = { KFENCE_SLOT_STATES(KF_NAME_OF) };
static const char *const kf_access_names[] = { KFENCE_ACCESSES(KF_NAME_OF) };
static const char *const kf_cache_names[] = { KFENCE_CACHES(KF_NAME_OF) };
static const char *const kf_placement_names[] = { KFENCE_PLACEMENTS(KF_NAME_OF) };
#undef KF_NAME_OF

#define KF_BUG_DESC(id, name, headline, with_access) { name, headline, with_access },
static const struct kfence_bug_desc kf_bugs[] = { KFENCE_BUGS(KF_BUG_DESC) };
#undef KF_BUG_DESC

#define KF_FAMILY_DESC(id, allocator, deallocator) { allocator, deallocator },
static const struct kfence_family_desc kf_families[] = { KFENCE_FAMILIES(KF_FAMILY_DESC) };
#undef KF_FAMILY_DESC

#define KF_FAMILY_OF(id, name, family) KFENCE_FAMILY_##family,
static const uint8_t kf_cache_families[] = { KFENCE_CACHES(KF_FAMILY_OF) };
#undef KF_FAMILY_OF

#define KF_DETAIL_DESC(id, name, text) { name, text },
static const struct kfence_detail_desc kf_details[] = { KFENCE_DETAILS(KF_DETAIL_DESC) };
#undef KF_DETAIL_DESC

#define KF_COUNTER_DESC(id, name, type, metric, label, help) { name, #type, metric, label, help },
static const struct kfence_counter_desc kf_counters[] = { KFENCE_COUNTERS(KF_COUNTER_DESC) };
#undef KF_COUNTER_DESC

#define KF_IN(table, i) ((i) >= 0 && (size_t)(i) < sizeof(table) / sizeof(table[0]))

KF_SIGSAFE const struct kfence_bug_desc *kfence_bug_desc(int kind)
{
	return KF_IN(kf_bugs, kind) ? &kf_bugs[kind] : NULL;
}

KF_SIGSAFE const struct kfence_counter_desc *kfence_counter_desc(int counter)
{
	return KF_IN(kf_counters, counter) ? &kf_counters[counter] : NULL;
}

KF_SIGSAFE const struct kfence_family_desc *kfence_family_desc(int family)
{
	return KF_IN(kf_families, family) ? &kf_families[family] : NULL;
}

KF_SIGSAFE int kfence_cache_family(int cache)
{
	return KF_IN(kf_cache_families, cache) ? kf_cache_families[cache] : -1;
}

KF_SIGSAFE const struct kfence_detail_desc *kfence_detail_desc(int detail)
{
	return KF_IN(kf_details, detail) ? &kf_details[detail] : NULL;
}

KF_SIGSAFE const char *kfence_slot_state_name(int state)
{
	return KF_IN(kf_slot_state_names, state) ? kf_slot_state_names[state] : NULL;
}

KF_SIGSAFE const char *kfence_access_name(int access)
{
	return KF_IN(kf_access_names, access) ? kf_access_names[access] : NULL;
}

KF_SIGSAFE const char *kfence_cache_name(int cache)
{
	return KF_IN(kf_cache_names, cache) ? kf_cache_names[cache] : NULL;
}

KF_SIGSAFE const char *kfence_placement_name(int placement)
{
	return KF_IN(kf_placement_names, placement) ? kf_placement_names[placement] : NULL;
}

KF_SIGSAFE const struct kfence_report_words *kfence_report_words(void)
{
	static const struct kfence_report_words words = { KF_REPORT_RULE_LINE, KF_REPORT_TITLE };
	return &words;
}

const char *kfence_version(void)
{
	return KF_VERSION;
}

/* === The library === */


int kfence_init(const char *options)
{
	if (options)
		return kf_init(options, "kfence_init()");
	return kf_init(getenv("KFENCE_OPTIONS"), "KFENCE_OPTIONS");
}

int kfence_is_initialized(void)
{
	return kf_ready();
}

int kfence_is_interposing(void)
{
	return kf_interposing;
}

struct kfence_state *kfence_state(void)
{
	return kf_ready() ? kf_state : NULL;
}

void *kfence_alloc(size_t size, size_t align, int placement, int zero, int cache)
{
	if (size == 0 || (align & (align - 1)) || placement < 0 || placement >= KFENCE_PLACEMENT_KINDS ||
	    cache < 0 || cache >= KFENCE_CACHE_KINDS) {
		errno = EINVAL;
		return NULL;
	}
	return kf_guarded_alloc(size, align, placement, (unsigned)cache | (zero ? KF_ZERO : 0), 0, -1);
}

void kfence_free(void *ptr)
{
	extern void free(void *);
	if (kf_is_pool_address(ptr))
		kf_pool_free(ptr, (uintptr_t)__builtin_return_address(0), KFENCE_FAMILY_MALLOC, 0);
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

void *kfence_sample(int32_t *countdown, size_t size, size_t align, int cache, int zero,
		    uintptr_t where)
{
	if (cache < 0 || cache >= KFENCE_CACHE_KINDS || (align & (align - 1)))
		return NULL;
	return kf_sample_alloc(countdown, size, align, cache, zero != 0, where);
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
