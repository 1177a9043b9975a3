/*
 * Micro-benchmark driver: N rounds of p = malloc(size); touch p; free(p).
 *
 *   loop ITERATIONS SIZE          the timed loop; prints nothing
 *   loop ITERATIONS SIZE which    then prints the object that defines the
 *                                 malloc this process calls (sanity check)
 *   loop ITERATIONS SIZE uaf      then reads a freed object (sanity check: a
 *                                 sampling allocator must report it)
 *
 * Build with -O2 -fno-builtin-malloc -fno-builtin-free: malloc and free are
 * then opaque calls the compiler cannot pair up and drop, and every object is
 * also written through a volatile pointer.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long parse_count(const char *s, const char *what)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (*s == '\0' || *end != '\0') {
		fprintf(stderr, "loop: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

/* First and last byte written: the object must exist and be writable. */
static void touch(void *p, size_t size)
{
	volatile unsigned char *b = p;
	b[0] = 1;
	b[size - 1] = 2;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s ITERATIONS SIZE [which|uaf]\n", argv[0]);
		return 2;
	}
	unsigned long n = parse_count(argv[1], "iteration count");
	size_t size = parse_count(argv[2], "size");
	const char *check = argc == 4 ? argv[3] : NULL;
	if (size == 0) {
		fprintf(stderr, "loop: size must be at least 1\n");
		return 2;
	}

	for (unsigned long i = 0; i < n; i++) {
		void *p = malloc(size);
		if (!p) {
			fprintf(stderr, "loop: malloc failed at iteration %lu\n", i);
			return 1;
		}
		touch(p, size);
		free(p);
	}

	if (check && strcmp(check, "which") == 0) {
		/* The address of malloc as this program resolves it (through its GOT). */
		void *(*volatile fn)(size_t) = malloc;
		Dl_info info;
		if (!dladdr((void *)fn, &info) || !info.dli_fname) {
			fprintf(stderr, "loop: dladdr failed\n");
			return 1;
		}
		printf("%s\n", info.dli_fname);
	} else if (check && strcmp(check, "uaf") == 0) {
		volatile unsigned char *p = malloc(size);
		if (!p)
			return 1;
		p[0] = 3;
		free((void *)p);
		unsigned char v = p[0];  /* use after free, on purpose */
		printf("read %u after free\n", (unsigned)v);
	} else if (check) {
		fprintf(stderr, "loop: unknown check %s\n", check);
		return 2;
	}
	return 0;
}
