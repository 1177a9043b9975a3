/*
 * Allocates and frees for argv[1] milliseconds (or argv[2] times) and prints
 * the counters, to check how many allocations each sampling mode guards.
 */
#include <time.h>

#include "kftest.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	double ms = atof(argv[1]);
	long limit = argc > 2 ? atol(argv[2]) : -1;
	double end = now_ms() + ms;
	long n = 0;
	while ((limit < 0 && now_ms() < end) || n < limit) {
		char *volatile p = malloc(32);
		p[0] = 1;
		free(p);
		n++;
	}
	printf("iterations %ld\n", n);
	kf_test_print_counters();
	return 0;
}
