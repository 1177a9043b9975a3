/* A thread on a stack the program provides (a static buffer), freeing its own heap memory. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static char stack[1 << 20] __attribute__((aligned(4096)));
static void *run(void *a) {
	(void)a;
	for (int i = 0; i < 1000; i++) { char *volatile p = malloc(100 + i); p[0] = 1; free(p); }
	return NULL;
}
int main(void) {
	pthread_attr_t at;
	pthread_t t;
	pthread_attr_init(&at);
	pthread_attr_setstack(&at, stack, sizeof(stack));
	if (pthread_create(&t, &at, run, NULL)) return 2;
	pthread_join(t, NULL);
	puts("ok");
	return 0;
}
