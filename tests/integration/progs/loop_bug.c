/*
 * One bug in a loop: each of 100 requests overflows its 16-byte buffer by
 * one byte, from the same line, on a buffer from the same line.  Then one
 * use-after-free at another site.
 */
#include <string.h>

#include "kftest.h"

static NOINLINE char *buffer(void)
{
	return malloc(16);
}

static NOINLINE void handle_request(int i)
{
	char *volatile p = buffer();
	memset(p, i, 17);
	printf("request %d: %d\n", i, p[0]);
	free(p);
}

static NOINLINE void other_bug(void)
{
	char *p = buffer();
	free(p);
	printf("stale %d\n", p[3]);
}

int main(void)
{
	for (int i = 0; i < 100; i++)
		handle_request(i);
	other_bug();
	kf_test_print_counters();
	return 0;
}
