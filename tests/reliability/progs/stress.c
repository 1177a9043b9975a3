/*
 * Stress: N threads allocate, reallocate and free random sizes for a bounded
 * time, half of the frees of objects another thread allocated.  At the end
 * the counters must agree: allocations - frees = currently allocated.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "kftest.h"

#define TABLE 1024

static void *_Atomic table[TABLE];
static double deadline;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
	uint64_t x = (uintptr_t)arg * 0x9e3779b97f4a7c15ull;
	long ops = 0;
	while (now() < deadline) {
		for (int k = 0; k < 256; k++, ops++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t n = (x >> 20) % 4200 + 1;
			char *p = (x & 1) ? malloc(n) : calloc(1, n);
			p[0] = p[n - 1] = 7;
			if ((x >> 8) % 4 == 0) {
				n = (x >> 32) % 9000 + 1;
				p = realloc(p, n);
				p[n - 1] = 9;
			}
			if ((x >> 16) & 1) {
				/* free another thread's object (or our own) through the table */
				free(atomic_exchange(&table[(x >> 40) % TABLE], p));
			} else {
				free(p);
			}
		}
	}
	return (void *)ops;
}

int main(int argc, char **argv)
{
	int n = atoi(argv[1]);
	deadline = now() + atof(argv[2]);
	pthread_t t[64];
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	long total = 0;
	for (int i = 0; i < n; i++) {
		void *ops;
		pthread_join(t[i], &ops);
		total += (long)ops;
	}
	for (int i = 0; i < TABLE; i++)
		free(table[i]);
	printf("ops %ld\n", total);
	kf_test_print_counters();
	return 0;
}
