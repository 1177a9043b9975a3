/*
 * Faults racing with the allocation and free of the very slot they hit.
 * argv[1] threads allocate and free in a loop, publishing for each object
 * the address of its last byte (a use-after-free once it is freed) or of
 * the byte past its end (out-of-bounds); the main thread reads argv[2] of
 * those addresses.  Run with placement=right and align=1: the last byte of
 * every object in a slot is the same address, the byte past it the first
 * byte of the guard page after it.  The main thread reads the newest one
 * each time, while its slot is being freed and handed out again.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "kftest.h"

#define RECENT 64

static _Atomic uintptr_t recent[RECENT];
static _Atomic uint64_t published;
static _Atomic int stop;
static volatile char sink;

static uint64_t next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void *churn(void *arg)
{
	uint64_t x = (uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		size_t size = 1 + next(&x) % 256;
		char *p = malloc(size);
		memset(p, 1, size);
		uintptr_t at = (uintptr_t)p + size - 1 + (next(&x) & 1);
		uint64_t n = atomic_fetch_add(&published, 1);
		atomic_store_explicit(&recent[n % RECENT], at, memory_order_relaxed);
		free(p);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = atoi(argv[1]);
	long reads = atol(argv[2]);
	pthread_t t[16];
	for (int i = 0; i < threads && i < 16; i++)
		pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
	uint64_t seen = 0;
	for (long i = 0; i < reads; i++) {
		uint64_t n;
		while ((n = atomic_load(&published)) == seen)
			sched_yield();
		seen = n;
		uintptr_t at = atomic_load_explicit(&recent[(n - 1) % RECENT], memory_order_relaxed);
		if (at)
			sink = *(volatile char *)at;
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < threads && i < 16; i++)
		pthread_join(t[i], NULL);
	printf("reads done\n");
	return 0;
}
