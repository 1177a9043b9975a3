/*
 * A pool filled at start-up by one site, then a bug at a site not seen
 * before: start-up keeps 200 objects of 32 bytes alive (one call site, in a
 * loop); then new_site() overflows a 16-byte object by one byte, once.
 */
#include <string.h>

#include "kftest.h"

static NOINLINE void *startup_object(void)
{
	return malloc(32);
}

static NOINLINE void new_site(void)
{
	char *p = malloc(16);
	printf("new site guarded: %d\n", kf_test_guarded(p));
	fflush(stdout);
	memset(p, 'x', 17);
	free(p);
}

int main(void)
{
	static void *keep[200];
	for (int i = 0; i < 200; i++)
		keep[i] = startup_object();
	new_site();
	kf_test_print_counters();
	for (int i = 0; i < 200; i++)
		free(keep[i]);
	return 0;
}
