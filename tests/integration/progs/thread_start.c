/*
 * A thread-per-request server in small: 200 threads, alive at once, each
 * allocating a few objects.  At sample_rate=N only about one allocation in N
 * is to be guarded, whichever thread makes it: not every thread's first.
 */
#include <pthread.h>

#include "kftest.h"

#define THREADS 200

static pthread_barrier_t all_started;

static void *request(void *arg)
{
	(void)arg;
	void *p[4];
	for (int i = 0; i < 4; i++)
		p[i] = malloc(32);
	pthread_barrier_wait(&all_started);
	for (int i = 0; i < 4; i++)
		free(p[i]);
	return NULL;
}

int main(void)
{
	pthread_t t[THREADS];
	pthread_barrier_init(&all_started, NULL, THREADS);
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, request, NULL);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	kf_test_print_counters();
	return 0;
}
