/*
 * The sampled cycle (malloc + free of a guarded object), timed in-process,
 * and its breakdown step by step.
 *
 *   cycle loop WARM N REPS SIZE
 *       Run under LD_PRELOAD=libkfence.so with KFENCE_OPTIONS=sample_rate=1:
 *       WARM cycles first (num_objects of them: every slot's first use, its
 *       mapping and page fault, is out of the timing), then REPS rounds of N
 *       malloc(SIZE) + touch + free.  Prints the per-cycle time of each round,
 *       wall clock and thread CPU time:  "round wall_ns=.. cpu_ns=..", then
 *       "guarded=1" if one more object is a pool object (the loop measured
 *       what its name says).
 *
 *   cycle steps SLOTS N REPS FRAMES
 *       Without the preload: the same operations as libkfence's cycle, one
 *       at a time, on a pool laid out as libkfence lays it out (SLOTS data
 *       pages, each a mapping of its own between PROT_NONE guards, used in
 *       the freelist's order: the slot freed longest ago first).  Each step
 *       is timed on its own over N cycles per round; prints one line per
 *       step and round: "step NAME ns=<median> mean=<mean>".  The stack
 *       captures unwind from FRAMES frames below main, as deep as
 *       libkfence's own frames are in the loop above.
 *
 * The medians of the steps are robust to a preemption landing in one step of
 * one cycle; the loop's rounds are compared by their minimum.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <unwind.h>

#define NOINLINE __attribute__((noinline))

static uint64_t now_ns(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static unsigned long arg(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (*s == '\0' || *end != '\0') {
		fprintf(stderr, "cycle: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

/* === loop: the real cycle, through the preloaded library === */

static int run_loop(unsigned long warm, unsigned long n, unsigned long reps, size_t size)
{
	for (unsigned long i = 0; i < warm; i++) {
		volatile char *p = malloc(size);
		if (!p)
			return 1;
		p[0] = 1;
		free((void *)p);
	}
	for (unsigned long r = 0; r < reps; r++) {
		uint64_t w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
		for (unsigned long i = 0; i < n; i++) {
			volatile char *p = malloc(size);
			p[0] = 1;
			p[size - 1] = 2;
			free((void *)p);
		}
		uint64_t c1 = now_ns(CLOCK_THREAD_CPUTIME_ID), w1 = now_ns(CLOCK_MONOTONIC);
		printf("round wall_ns=%.1f cpu_ns=%.1f\n", (double)(w1 - w0) / (double)n,
		       (double)(c1 - c0) / (double)n);
	}
	/* The objects were guarded ones: a pool address (the library's own test of it). */
	int (*is_pool)(const void *) = (int (*)(const void *))dlsym(RTLD_DEFAULT,
								   "kfence_is_pool_address");
	void *p = malloc(size);
	printf("guarded=%d\n", is_pool && is_pool(p));
	free(p);
	return 0;
}

/* === steps: each operation of the cycle on its own === */

/* libkfence's canary pattern, 64 bytes a loop (csrc/pool.c). */
typedef uint64_t vec __attribute__((vector_size(16), may_alias));
static const vec canary = { 0xadacafaea9a8abaaull, 0xadacafaea9a8abaaull };

static void canary_fill(char *page, size_t len)
{
	for (vec *p = (vec *)page; p < (vec *)(page + len); p += 4) {
		p[0] = canary;
		p[1] = canary;
		p[2] = canary;
		p[3] = canary;
	}
}

static int canary_check(const char *page, size_t len)
{
	for (const vec *p = (const vec *)page; p < (const vec *)(page + len); p += 4) {
		vec d = (p[0] ^ canary) | (p[1] ^ canary) | (p[2] ^ canary) | (p[3] ^ canary);
		if (d[0] | d[1])
			return 1;
	}
	return 0;
}

struct trace {
	uintptr_t pc[64];
	int n;
};

static _Unwind_Reason_Code trace_frame(struct _Unwind_Context *ctx, void *arg)
{
	struct trace *t = arg;
	uintptr_t pc = _Unwind_GetIP(ctx);
	if (!pc || t->n == 64)
		return _URC_END_OF_STACK;
	t->pc[t->n++] = pc;
	return _URC_NO_REASON;
}

/* A stack capture from `frames` calls below the caller, as libkfence takes one. */
static NOINLINE int capture_below(int frames)
{
	if (frames > 0) {
		int n = capture_below(frames - 1);
		__asm__ volatile("" : : "r"(n) : "memory");  /* not a tail call: a frame each */
		return n;
	}
	struct trace t = { .n = 0 };
	_Unwind_Backtrace(trace_frame, &t);
	return t.n;
}

enum step {
	LOCK_POP, OPEN, FILL, CLOCKS, CAPTURE_ALLOC, CAPTURE_FREE, CHECK, CLOSE, LOCK_PUSH,
	MADV_FREE_STEP, NSTEPS
};
static const char *const step_names[NSTEPS] = {
	[LOCK_POP] = "freelist-pop", [OPEN] = "mprotect-rw", [FILL] = "canary-fill",
	[CLOCKS] = "clock-reads", [CAPTURE_ALLOC] = "stack-alloc", [CAPTURE_FREE] = "stack-free",
	[CHECK] = "canary-check", [CLOSE] = "mprotect-none", [LOCK_PUSH] = "freelist-push",
	[MADV_FREE_STEP] = "madvise-free (removed)",
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int run_steps(unsigned long slots, unsigned long n, unsigned long reps, int frames)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	char *pool = mmap(NULL, (2 * slots + 1) * page, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (pool == MAP_FAILED) {
		perror("cycle: mmap");
		return 1;
	}
	/* Every slot used once, as the loop's warm-up does: a mapping of its own, a page. */
	for (unsigned long i = 0; i < slots; i++) {
		char *p = pool + (2 * i + 1) * page;
		if (mmap(p, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			 -1, 0) == MAP_FAILED) {
			perror("cycle: mmap of a slot (vm.max_map_count?)");
			return 1;
		}
		canary_fill(p, page);
		mprotect(p, page, PROT_NONE);
	}
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	uint32_t *ring = calloc(slots, sizeof(*ring));
	uint64_t *t = calloc(n * NSTEPS, sizeof(*t));
	if (!ring || !t)
		return 1;
	for (unsigned long i = 0; i < slots; i++)
		ring[i] = (uint32_t)i;
	size_t head = 0, count = slots;
	uint64_t overhead = UINT64_MAX;  /* two clock reads with nothing between */
	for (int i = 0; i < 1000; i++) {
		uint64_t a = now_ns(CLOCK_MONOTONIC), b = now_ns(CLOCK_MONOTONIC);
		overhead = b - a < overhead ? b - a : overhead;
	}
	volatile uint64_t sink = 0;
	for (unsigned long r = 0; r < reps; r++) {
		for (unsigned long k = 0; k < n; k++) {
			uint64_t *s = &t[k * NSTEPS], a, b;
#define TIMED(step, code) do { a = now_ns(CLOCK_MONOTONIC); code; b = now_ns(CLOCK_MONOTONIC); \
			s[step] = b - a; } while (0)
			uint32_t slot = 0;
			TIMED(LOCK_POP, {
				pthread_mutex_lock(&lock);
				slot = ring[head];
				head = (head + 1) % slots;
				count--;
				pthread_mutex_unlock(&lock);
			});
			char *p = pool + (2 * (size_t)slot + 1) * page;
			TIMED(OPEN, mprotect(p, page, PROT_READ | PROT_WRITE));
			TIMED(FILL, canary_fill(p, page));
			TIMED(CLOCKS, sink += now_ns(CLOCK_MONOTONIC) + now_ns(CLOCK_MONOTONIC));
			TIMED(CAPTURE_ALLOC, sink += (uint64_t)capture_below(frames));
			p[0] = 1;
			TIMED(CAPTURE_FREE, sink += (uint64_t)capture_below(frames - 1));
			p[0] = (char)0xaa;
			TIMED(CHECK, sink += (uint64_t)canary_check(p, page));
			TIMED(CLOSE, mprotect(p, page, PROT_NONE));
			TIMED(MADV_FREE_STEP, madvise(p, page, MADV_FREE));
			TIMED(LOCK_PUSH, {
				pthread_mutex_lock(&lock);
				ring[(head + count) % slots] = slot;
				count++;
				pthread_mutex_unlock(&lock);
			});
#undef TIMED
		}
		uint64_t *col = malloc(n * sizeof(*col));
		for (int st = 0; st < NSTEPS; st++) {
			double mean = 0;
			for (unsigned long k = 0; k < n; k++) {
				uint64_t v = t[k * NSTEPS + st];
				col[k] = v > overhead ? v - overhead : 0;
				mean += (double)col[k];
			}
			qsort(col, n, sizeof(*col), cmp_u64);
			printf("step %s ns=%llu mean=%.0f\n", step_names[st],
			       (unsigned long long)col[n / 2], mean / (double)n);
		}
		free(col);
	}
	return sink == 42;  /* never: keeps the work */
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "loop") == 0)
		return run_loop(arg(argv[2], "warm-up"), arg(argv[3], "count"), arg(argv[4], "rounds"),
				arg(argv[5], "size"));
	if (argc == 6 && strcmp(argv[1], "steps") == 0)
		return run_steps(arg(argv[2], "slots"), arg(argv[3], "count"), arg(argv[4], "rounds"),
				 (int)arg(argv[5], "frames"));
	fprintf(stderr, "usage: cycle loop WARM N REPS SIZE | cycle steps SLOTS N REPS FRAMES\n");
	return 2;
}
