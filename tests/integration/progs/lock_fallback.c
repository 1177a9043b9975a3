/*
 * Reports while another thread holds the dynamic loader's lock: thread C
 * dlopen()s slow_ctor.so (argv[1]) and so holds the loader's lock; threads A
 * and B each write to a freed object.  A report looks symbols up without
 * the loader (no dladdr), so the first is printed while C waits and its
 * thread then lets the constructor finish; the second follows.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "kftest.h"

static char *objects[2];
static int ready[2], go[2];

static void *load(void *path)
{
	if (!dlopen(path, RTLD_NOW))
		abort();
	return NULL;
}

static void *use_after_free(void *arg)
{
	char *p = arg;
	p[1] = 'x';
	char c = 1;
	if (write(go[1], &c, 1) != 1)  /* the constructor may finish now */
		abort();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 1;
	for (int i = 0; i < 2; i++) {
		objects[i] = malloc(32);
		free(objects[i]);
	}
	printf("guarded %d %d\n", kf_test_guarded(objects[0]), kf_test_guarded(objects[1]));
	fflush(stdout);
	char num[16];
	if (pipe(ready) || pipe(go))
		return 1;
	snprintf(num, sizeof(num), "%d", ready[1]);
	setenv("KFTEST_READY_FD", num, 1);
	snprintf(num, sizeof(num), "%d", go[0]);
	setenv("KFTEST_GO_FD", num, 1);

	struct kfence_state *s = kf_test_state();  /* dlsym(): not while C loads */
	pthread_t c, t[2];
	pthread_create(&c, NULL, load, argv[1]);
	char byte;
	if (read(ready[0], &byte, 1) != 1)  /* the loader's lock is held now */
		return 1;
	pthread_create(&t[0], NULL, use_after_free, objects[0]);
	/* Until the first report is under way (recorded), then the second. */
	while (!atomic_load((_Atomic uint64_t *)&s->reports_written))
		sched_yield();
	pthread_create(&t[1], NULL, use_after_free, objects[1]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	pthread_join(c, NULL);
	kf_test_print_counters();
	return 0;
}
