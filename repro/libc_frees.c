/* glibc's own allocations freed the documented ways, fork children freeing, realloc(p, 0), aligned frees. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <iconv.h>
#include <locale.h>
#include <malloc.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void *work(void *x) { (void)x; for (int i = 0; i < 2000; i++) { char *volatile p = strdup("abcdefghijklmnopqrstuvwxyz"); free(p); } return NULL; }
int main(void) {
	setlocale(LC_ALL, "C.UTF-8");
	struct addrinfo *res = NULL;
	if (getaddrinfo("localhost", "80", NULL, &res) == 0) freeaddrinfo(res);
	iconv_t cd = iconv_open("UTF-16", "UTF-8"); if (cd != (iconv_t)-1) iconv_close(cd);
	dlopen("/nonexistent.so", RTLD_NOW); (void)dlerror();
	char *line = NULL; size_t cap = 0; FILE *f = fopen("/proc/self/status", "r"); while (getline(&line, &cap, f) > 0) {} free(line); fclose(f);
	for (int i = 0; i < 200; i++) {
		void *a; posix_memalign(&a, 64, 100); free(a);
		free(aligned_alloc(4096, 4096)); free(memalign(32, 10)); free(valloc(100)); free(pvalloc(100));
		char *r = malloc(10); r = realloc(r, 0); free(r);
		char *u = malloc(100); (void)malloc_usable_size(u); free(u);
		free(calloc(10, 10)); free(reallocarray(NULL, 3, 7));
		char *m = NULL; (void)asprintf(&m, "%d", i); free(m);
	}
	pthread_t t[3]; for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, work, NULL);
	for (int k = 0; k < 5; k++) { pid_t c = fork(); if (c == 0) { work(NULL); char *p = strdup("child"); free(p); _exit(0); } waitpid(c, NULL, 0); }
	for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
	puts("ok");
	return 0;
}
