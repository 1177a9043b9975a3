/*
 * Correct program: threads keep sampled objects live and realloc them,
 * ask malloc_usable_size, and free them, while a controller asks for
 * canary sweeps (sweep_poke.py).  No report, no lost object may result.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static volatile int stop;
static long bad_realloc, bad_usable;
static void *run(void *x) {
	(void)x;
	char *keep[32] = { 0 };
	while (!stop) {
		for (int i = 0; i < 32; i++) {
			if (!keep[i]) { keep[i] = malloc(64); memset(keep[i], 'a', 64); continue; }
			if (malloc_usable_size(keep[i]) < 64) __atomic_add_fetch(&bad_usable, 1, 0);
			char *q = realloc(keep[i], 64 + (i & 1) * 16);
			if (!q) { /* C says p is still ours: keep using it */
				__atomic_add_fetch(&bad_realloc, 1, 0); keep[i][0] = 'a'; continue; }
			if (q[0] != 'a' || q[63] != 'a') __atomic_add_fetch(&bad_realloc, 1, 0);
			keep[i] = q;
			if ((i & 7) == 0) { free(keep[i]); keep[i] = NULL; }
		}
	}
	for (int i = 0; i < 32; i++) free(keep[i]);
	return NULL;
}
int main(int argc, char **argv) {
	int secs = argc > 1 ? atoi(argv[1]) : 10;
	pthread_t t[3];
	for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, run, NULL);
	sleep(secs);
	stop = 1;
	for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
	printf("bad_realloc=%ld bad_usable=%ld\n", bad_realloc, bad_usable);
	return bad_realloc || bad_usable;
}
