/*
 * Two threads each write to a freed object while stderr is a full pipe that
 * nobody reads: the first to take the report lock blocks in write() for
 * good, the other's wait for the lock times out.  That one goes on, prints
 * what the state recorded and exits.
 */
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "kftest.h"

static char *objects[2];

static void *use_after_free(void *arg)
{
	char *p = arg;
	p[1] = 'x';
	struct kfence_state *s = kf_test_state();
	const struct kfence_report *r = (const void *)((const char *)s + s->reports_offset);
	printf("reports_written=%llu kinds=", (unsigned long long)s->reports_written);
	for (uint64_t i = 0; i < s->reports_written && i < s->max_reports; i++)
		printf("%s%u", i ? "," : "", r[i].sequence ? r[i].kind : 99u);
	printf("\n");
	kf_test_print_counters();
	exit(0);
}

int main(void)
{
	for (int i = 0; i < 2; i++) {
		objects[i] = malloc(32);
		free(objects[i]);
	}
	printf("guarded %d %d\n", kf_test_guarded(objects[0]), kf_test_guarded(objects[1]));
	fflush(stdout);

	/* stderr becomes a full pipe; its read end stays open and unread. */
	int p[2];
	static char junk[4096];
	if (pipe(p) || fcntl(p[1], F_SETFL, O_NONBLOCK))
		return 1;
	for (size_t n = sizeof(junk); n; n /= 2)
		while (write(p[1], junk, n) > 0)
			;
	fcntl(p[1], F_SETFL, 0);
	dup2(p[1], 2);

	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, use_after_free, objects[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	return 1;  /* not reached: one thread exits, the other never returns */
}
