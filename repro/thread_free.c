#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static void *run(void *a) {
	(void)a;
	for (int i = 0; i < 1000; i++) { char *volatile p = malloc(100 + i); p[0] = 1; free(p); }
	return NULL;
}
int main(void) {
	pthread_t t[4];
	for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, run, NULL);
	for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
	puts("ok");
	return 0;
}
