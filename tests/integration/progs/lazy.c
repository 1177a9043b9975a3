/*
 * What start-up leaves for later: libgcc_s's unwinder is loaded at the first
 * guarded object, not at start-up, and never by an allocation the dynamic
 * loader makes in the middle of a dlopen.  Nothing here allocates before the
 * step it tests: the results are printed at the end.
 *
 *   lazy first        libgcc_s mapped? then one malloc (guarded with
 *                     sample_rate=1), then mapped again?
 *   lazy dlopen LIB   dlopen(LIB) first (the loader allocates), then one malloc:
 *                     guarded objects and libgcc_s after each
 */
#include <fcntl.h>
#include <unistd.h>

#include "kftest.h"

static char maps[1 << 18];

/* libgcc_s.so is mapped in this process (read without malloc). */
static int gcc_mapped(void)
{
	int fd = open("/proc/self/maps", O_RDONLY);
	size_t total = 0;
	ssize_t n;
	if (fd < 0)
		return -1;
	while (total < sizeof(maps) - 1 && (n = read(fd, maps + total, sizeof(maps) - 1 - total)) > 0)
		total += (size_t)n;
	close(fd);
	maps[total] = '\0';
	return strstr(maps, "libgcc_s.so") != NULL;
}

static unsigned long long guarded(void)
{
	struct kfence_state *s = kf_test_state();
	return s ? (unsigned long long)s->counters[KFENCE_COUNTER_ALLOCS] : 0;
}

NOINLINE static void *alloc_object(void)
{
	return malloc(24);
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "first") == 0) {
		int before = gcc_mapped();
		void *p = alloc_object();
		int after = gcc_mapped();
		int is_guarded = kf_test_guarded(p);
		free(p);
		printf("before=%d guarded=%d after=%d\n", before, is_guarded, after);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "dlopen") == 0) {
		void *lib = dlopen(argv[2], RTLD_NOW);
		unsigned long long objects = guarded();
		int mapped = gcc_mapped();
		void *p = alloc_object();
		unsigned long long objects_after = guarded();
		int mapped_after = gcc_mapped();
		free(p);
		printf("loaded=%d objects=%llu gcc=%d objects_after=%llu gcc_after=%d\n",
		       lib != NULL, objects, mapped, objects_after, mapped_after);
		return 0;
	}
	fprintf(stderr, "usage: lazy first | lazy dlopen LIB\n");
	return 2;
}
