/*
 * A report behind a stuck writer: stderr is a pipe this program fills to
 * the brim, so thread A's report blocks in write() holding the report lock.
 * Thread B's report must not wait for it for good: B gives up the print
 * (a fallback line only if stderr takes it at once: it does not) and goes
 * on, its bug counted.  Then the pipe is drained to stdout and A finishes.
 */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "kftest.h"

static int pipefd[2];

static void *use_after_free(void *arg)
{
	((char *)arg)[1] = 'x';
	return NULL;
}

static void *drain(void *arg)
{
	(void)arg;
	char buf[4096];
	ssize_t n;
	while ((n = read(pipefd[0], buf, sizeof(buf))) > 0)
		if (write(1, buf, (size_t)n) != n)
			abort();
	return NULL;
}

int main(void)
{
	char *objects[2];
	for (int i = 0; i < 2; i++) {
		objects[i] = malloc(32);
		free(objects[i]);
	}
	printf("guarded %d %d\n", kf_test_guarded(objects[0]), kf_test_guarded(objects[1]));
	fflush(stdout);
	struct kfence_state *s = kf_test_state();
	if (pipe(pipefd) || dup2(pipefd[1], 2) < 0)
		return 1;
	/* Fill the pipe: nothing more fits until it is read. */
	fcntl(2, F_SETFL, O_NONBLOCK);
	static char fill[4096];
	memset(fill, '.', sizeof(fill));
	while (write(2, fill, sizeof(fill)) > 0 || write(2, fill, 1) > 0)
		;
	fcntl(2, F_SETFL, 0);

	pthread_t a, b, d;
	pthread_create(&a, NULL, use_after_free, objects[0]);
	/* A has recorded its report and now waits in write(). */
	while (!atomic_load((_Atomic uint64_t *)&s->reports_written))
		sched_yield();
	pthread_create(&b, NULL, use_after_free, objects[1]);
	pthread_join(b, NULL);
	printf("B returned while A was stuck, bugs=%llu\n",
	       (unsigned long long)s->counters[KFENCE_COUNTER_BUGS]);
	fflush(stdout);
	pthread_create(&d, NULL, drain, NULL);
	pthread_join(a, NULL);
	dup2(1, 2);  /* the drain ends once no one holds the pipe's write end */
	close(pipefd[1]);
	pthread_join(d, NULL);
	kf_test_print_counters();
	return 0;
}
