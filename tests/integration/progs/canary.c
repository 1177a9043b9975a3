/*
 * Writes into a guarded object's page, outside the object, at chosen
 * offsets from the page's start: each must be found by the canary check at
 * free, wherever it falls in the page.
 *
 *   canary SIZE OFFSET...    for each OFFSET: allocate SIZE bytes, write one
 *                            byte at page + OFFSET ("-" writes nothing),
 *                            free; prints "page+OFFSET object=START" lines
 *
 * Run with num_objects=1, so every object reuses the one slot (and its page).
 */
#include "kftest.h"

NOINLINE static char *alloc_object(size_t n)
{
	return malloc(n);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: canary SIZE OFFSET...\n");
		return 2;
	}
	size_t size = strtoul(argv[1], NULL, 10);
	for (int i = 2; i < argc; i++) {
		char *p = alloc_object(size);
		if (!kf_test_guarded(p)) {
			printf("not guarded\n");
			return 1;
		}
		char *page = (char *)((uintptr_t)p & ~(uintptr_t)4095);
		memset(p, 0x11, size);  /* the object's own bytes are the program's */
		if (strcmp(argv[i], "-") != 0) {
			long off = strtol(argv[i], NULL, 10);
			*(volatile char *)(page + off) = 0x5a;
		}
		printf("page+%s object=%ld\n", argv[i], (long)(p - page));
		free(p);
	}
	kf_test_print_counters();
	printf("done\n");
	return 0;
}
