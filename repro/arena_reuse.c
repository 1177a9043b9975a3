/*
 * Plain pthreads, no tricks: thread B's stack is mapped after thread A's
 * arena (so below it); A exits, B's first malloc takes A's arena off
 * glibc's free list, and B's heap is above B's stack.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static pthread_barrier_t go;
static void *a_run(void *x) {
	(void)x;
	char *volatile p = malloc(100);  /* creates arena 1 */
	free(p);
	return NULL;
}
static void *b_run(void *x) {
	(void)x;
	pthread_barrier_wait(&go);      /* A has exited */
	for (int i = 0; i < 100; i++) { char *volatile p = malloc(100 + i); p[0] = 1; free(p); }
	return NULL;
}
int main(void) {
	pthread_t a, b;
	pthread_barrier_init(&go, NULL, 2);
	pthread_create(&a, NULL, a_run, NULL);
	usleep(100000);
	pthread_create(&b, NULL, b_run, NULL);
	pthread_join(a, NULL);
	pthread_barrier_wait(&go);
	pthread_join(b, NULL);
	puts("ok");
	return 0;
}
