/* Helpers shared by the test programs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfence_state.h"

#define NOINLINE __attribute__((noinline))

/* The preloaded library's state, or NULL when not preloaded. */
static inline struct kfence_state *kf_test_state(void)
{
	struct kfence_state *(*get)(void) = (struct kfence_state * (*)(void)) dlsym(RTLD_DEFAULT, "kfence_state");
	return get ? get() : NULL;
}

/* 1 if p is a guarded (pool) object. */
static inline int kf_test_guarded(const void *p)
{
	int (*is_pool)(const void *) = (int (*)(const void *))dlsym(RTLD_DEFAULT, "kfence_is_pool_address");
	return is_pool ? is_pool(p) : 0;
}

/* "counters: allocated=.. allocs=.. frees=.. bugs=.. capacity=.." on stdout. */
static inline void kf_test_print_counters(void)
{
	struct kfence_state *s = kf_test_state();
	if (!s) {
		printf("counters: none\n");
		return;
	}
	printf("counters: allocated=%llu allocs=%llu frees=%llu bugs=%llu capacity=%llu too_large=%llu"
	       " covered=%llu repeated=%llu\n",
	       (unsigned long long)s->counters[KFENCE_COUNTER_ALLOCATED],
	       (unsigned long long)s->counters[KFENCE_COUNTER_ALLOCS],
	       (unsigned long long)s->counters[KFENCE_COUNTER_FREES],
	       (unsigned long long)s->counters[KFENCE_COUNTER_BUGS],
	       (unsigned long long)s->counters[KFENCE_COUNTER_SKIP_CAPACITY],
	       (unsigned long long)s->counters[KFENCE_COUNTER_SKIP_TOO_LARGE],
	       (unsigned long long)s->counters[KFENCE_COUNTER_SKIP_COVERED],
	       (unsigned long long)s->counters[KFENCE_COUNTER_REPEATED]);
	fflush(stdout);
}
