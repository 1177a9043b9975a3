/*
 * Correct threaded programs whose heap lies above a thread's stack (here a
 * stack the program gives the thread, in its .bss; it happens as well with
 * glibc's own stacks once a thread's stack is mapped below an arena),
 * freeing under check_free=1:
 *   free     the thread frees its own memory
 *   getattr  the thread first asks pthread_getattr_np about itself (as
 *            language runtimes do at thread start), which frees inside
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char stack[1 << 20] __attribute__((aligned(4096)));
static int ask_attr;

static void *body(void *x)
{
	(void)x;
	if (ask_attr) {
		pthread_attr_t attr;
		if (pthread_getattr_np(pthread_self(), &attr) == 0)
			pthread_attr_destroy(&attr);
	}
	for (int i = 0; i < 100; i++) {
		char *volatile p = malloc(100 + (size_t)i);
		p[0] = 1;
		free(p);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	ask_attr = argc > 1 && !strcmp(argv[1], "getattr");
	pthread_attr_t attr;
	pthread_t t;
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, stack, sizeof(stack));
	if (pthread_create(&t, &attr, body, NULL) != 0)
		return 2;
	pthread_join(t, NULL);
	puts("done");
	return 0;
}
