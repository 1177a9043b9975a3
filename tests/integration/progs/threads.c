/*
 * Threads and fork: "threads N [ITERATIONS]" allocates, reallocates and frees from N
 * threads, half the frees of objects another thread allocated; "fork N"
 * forks N times while those threads run, and each child must allocate and
 * exit (a hang here is the bug: the test has a timeout).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kftest.h"

#define SLOTS 64

static void *_Atomic handoff[SLOTS];
static _Atomic int stop;
static int iterations = 200000;

static void *worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u;
	for (int i = 0; !stop && i < iterations; i++) {
		seed = seed * 1103515245u + 12345u;
		size_t n = (seed >> 8) % 600 + 1;
		char *p = malloc(n);
		memset(p, 0x33, n);
		if (seed & 0x10000) {
			p = realloc(p, n * 2);
			memset(p, 0x44, n * 2);
		}
		/* Swap with the shared table: we free what another thread left there. */
		char *other = atomic_exchange(&handoff[(seed >> 4) % SLOTS], p);
		free(other);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int nthreads = argc > 2 ? atoi(argv[2]) : 4;
	int forks = strcmp(argv[1], "fork") == 0 ? atoi(argv[3]) : 0;
	if (strcmp(argv[1], "threads") == 0 && argc > 3)
		iterations = atoi(argv[3]);
	pthread_t t[16];
	for (int i = 0; i < nthreads; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	int bad_children = 0;
	for (int i = 0; i < forks; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			char *p = malloc(100);
			memset(p, 1, 100);
			free(p);
			p = calloc(10, 10);
			free(p);
			_exit(0);
		}
		int status;
		waitpid(pid, &status, 0);
		bad_children += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	if (forks)
		stop = 1;
	for (int i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < SLOTS; i++)
		free(handoff[i]);
	printf("bad children: %d\n", bad_children);
	kf_test_print_counters();
	return 0;
}
