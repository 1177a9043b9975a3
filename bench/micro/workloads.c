/*
 * Allocation patterns beyond loop.c's malloc(32)+free, one per mode:
 *
 *   workloads mixed   N     N rounds over a window of 256 live objects: free
 *                           a random one, malloc a random size in 1..4096
 *   workloads realloc N     N growth chains: realloc from 16 bytes, doubling
 *                           to 64 KiB, then free
 *   workloads threads N T X T threads (1 or 2), each N rounds of malloc and
 *                           free; X "cross": half of the objects are freed by
 *                           the other thread (handed over through a ring
 *                           buffer), X "local": each thread frees its own
 *   workloads heap    N     a heap of 100000 live objects of 16..256 bytes,
 *                           then N rounds of freeing a random one and
 *                           allocating its replacement
 *
 * Every object is written to, so it must exist.  Built with
 * -fno-builtin-malloc and friends: the calls stay opaque to the compiler.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long parse_count(const char *s)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (*s == '\0' || *end != '\0') {
		fprintf(stderr, "workloads: bad count: %s\n", s);
		exit(2);
	}
	return v;
}

/* xorshift64: a fixed sequence, so every mode sees the same requests. */
static inline uint64_t next_rand(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void *xmalloc(size_t size)
{
	unsigned char *p = malloc(size);
	if (!p) {
		fprintf(stderr, "workloads: malloc(%zu) failed\n", size);
		exit(1);
	}
	((volatile unsigned char *)p)[0] = 1;
	((volatile unsigned char *)p)[size - 1] = 2;
	return p;
}

/* === mixed sizes === */

#define WINDOW 256

/* n times: free a random one of live[count] and put a new object of min..min+span-1 there. */
static void churn(void **live, unsigned count, unsigned long n, uint64_t *seed, size_t min,
		  size_t span)
{
	for (unsigned long i = 0; i < n; i++) {
		unsigned slot = next_rand(seed) % count;
		free(live[slot]);
		live[slot] = xmalloc(min + next_rand(seed) % span);
	}
	for (unsigned i = 0; i < count; i++)
		free(live[i]);
}

static int run_mixed(unsigned long n)
{
	void *live[WINDOW] = { 0 };
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	churn(live, WINDOW, n, &seed, 1, 4096);
	return 0;
}

/* === realloc growth chains === */

static int run_realloc(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++) {
		unsigned char *p = xmalloc(16);
		for (size_t size = 32; size <= 65536; size *= 2) {
			unsigned char *q = realloc(p, size);
			if (!q) {
				fprintf(stderr, "workloads: realloc(%zu) failed\n", size);
				return 1;
			}
			((volatile unsigned char *)q)[size - 1] = 3;
			p = q;
		}
		free(p);
	}
	return 0;
}

/* === threads, with cross-thread frees === */

/*
 * A single-producer single-consumer ring per direction: thread t pushes every
 * other object into ring[t] and frees what it pops from ring[1 - t].  When a
 * ring is full the producer frees the object itself, so neither thread waits.
 */
#define RING 1024

struct ring {
	_Atomic unsigned long head;  /* written by the producer */
	char pad1[64 - sizeof(unsigned long)];
	_Atomic unsigned long tail;  /* written by the consumer */
	char pad2[64 - sizeof(unsigned long)];
	void *slot[RING];
};

static struct ring rings[2];
static unsigned long thread_rounds;
static int cross_free;

static int ring_push(struct ring *r, void *p)
{
	unsigned long h = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (h - atomic_load_explicit(&r->tail, memory_order_acquire) == RING)
		return 0;
	r->slot[h % RING] = p;
	atomic_store_explicit(&r->head, h + 1, memory_order_release);
	return 1;
}

static void *ring_pop(struct ring *r)
{
	unsigned long t = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (t == atomic_load_explicit(&r->head, memory_order_acquire))
		return NULL;
	void *p = r->slot[t % RING];
	atomic_store_explicit(&r->tail, t + 1, memory_order_release);
	return p;
}

static void *thread_main(void *arg)
{
	int me = (int)(intptr_t)arg;
	uint64_t seed = 0x2545f4914f6cdd1dull + (uint64_t)me;
	for (unsigned long i = 0; i < thread_rounds; i++) {
		void *p = xmalloc(16 + next_rand(&seed) % 240);
		if (!(cross_free && (i & 1) && ring_push(&rings[me], p)))
			free(p);
		if (cross_free)
			free(ring_pop(&rings[1 - me]));
	}
	return NULL;
}

static int run_threads(unsigned long n, unsigned long threads, const char *how)
{
	if (threads != 1 && threads != 2) {
		fprintf(stderr, "workloads: threads must be 1 or 2\n");
		return 2;
	}
	pthread_t tid[2];
	thread_rounds = n;
	if (strcmp(how, "cross") != 0 && strcmp(how, "local") != 0) {
		fprintf(stderr, "workloads: threads takes cross or local, not %s\n", how);
		return 2;
	}
	cross_free = threads == 2 && strcmp(how, "cross") == 0;
	for (unsigned long t = 0; t < threads; t++) {
		if (pthread_create(&tid[t], NULL, thread_main, (void *)(intptr_t)t) != 0) {
			fprintf(stderr, "workloads: pthread_create failed\n");
			return 1;
		}
	}
	for (unsigned long t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	/* Objects still in flight once both threads stopped. */
	for (int t = 0; t < 2; t++) {
		void *p;
		while ((p = ring_pop(&rings[t])) != NULL)
			free(p);
	}
	return 0;
}

/* === a long-lived heap with churn === */

#define HEAP_OBJECTS 100000

static int run_heap(unsigned long n)
{
	void **heap = xmalloc(HEAP_OBJECTS * sizeof(void *));
	uint64_t seed = 0xda942042e4dd58b5ull;
	for (unsigned i = 0; i < HEAP_OBJECTS; i++)
		heap[i] = xmalloc(16 + next_rand(&seed) % 241);
	churn(heap, HEAP_OBJECTS, n, &seed, 16, 241);
	free(heap);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s mixed|realloc|heap N | threads N T cross|local\n", argv[0]);
		return 2;
	}
	unsigned long n = parse_count(argv[2]);
	if (strcmp(argv[1], "mixed") == 0 && argc == 3)
		return run_mixed(n);
	if (strcmp(argv[1], "realloc") == 0 && argc == 3)
		return run_realloc(n);
	if (strcmp(argv[1], "heap") == 0 && argc == 3)
		return run_heap(n);
	if (strcmp(argv[1], "threads") == 0 && argc == 5)
		return run_threads(n, parse_count(argv[3]), argv[4]);
	fprintf(stderr, "workloads: unknown mode or wrong arguments: %s\n", argv[1]);
	return 2;
}
