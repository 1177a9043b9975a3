/*
 * The public interface (kfence.h) and the name tables of the lists in
 * kfence_state.h.
 */
#define _GNU_SOURCE
#include "kf_internal.h"

#define KF_VERSION "0.1.0"

_Static_assert(sizeof(struct kfence_stack) == 8 + 8 * KFENCE_STACK_MAX, "stack layout");
_Static_assert(sizeof(struct kfence_slot) == 56 + 2 * sizeof(struct kfence_stack) +
		       2 * KFENCE_NOTE_SIZE, "slot layout");
_Static_assert(sizeof(struct kfence_state) == 248, "state header layout");
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

#define KF_COUNTER_DESC(id, name, type, metric, label, help) { name, #type, metric, label, help },
static const struct kfence_counter_desc kf_counters[] = { KFENCE_COUNTERS(KF_COUNTER_DESC) };
#undef KF_COUNTER_DESC

#define KF_IN(table, i) ((i) >= 0 && (size_t)(i) < sizeof(table) / sizeof(table[0]))

const struct kfence_bug_desc *kfence_bug_desc(int kind)
{
	return KF_IN(kf_bugs, kind) ? &kf_bugs[kind] : NULL;
}

const struct kfence_counter_desc *kfence_counter_desc(int counter)
{
	return KF_IN(kf_counters, counter) ? &kf_counters[counter] : NULL;
}

const char *kfence_slot_state_name(int state)
{
	return KF_IN(kf_slot_state_names, state) ? kf_slot_state_names[state] : NULL;
}

const char *kfence_access_name(int access)
{
	return KF_IN(kf_access_names, access) ? kf_access_names[access] : NULL;
}

const char *kfence_cache_name(int cache)
{
	return KF_IN(kf_cache_names, cache) ? kf_cache_names[cache] : NULL;
}

const char *kfence_placement_name(int placement)
{
	return KF_IN(kf_placement_names, placement) ? kf_placement_names[placement] : NULL;
}

const char *kfence_version(void)
{
	return KF_VERSION;
}
