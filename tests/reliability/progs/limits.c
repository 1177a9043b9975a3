/*
 * Limits: "efault" hands a freed guarded object to the kernel (write(2)),
 * which must fail with EFAULT, not crash.  "hold N" makes N mappings of its
 * own, then holds 300 objects at once (run it under a low vm.max_map_count:
 * mprotect is refused and allocations must fall back to glibc).  "many" is a
 * plain workload (run it with the address space capped, so the pool cannot
 * be mapped at all).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kftest.h"

int main(int argc, char **argv)
{
	if (strcmp(argv[1], "efault") == 0) {
		char *p = malloc(64);
		memset(p, 'a', 64);
		int guarded = kf_test_guarded(p);
		free(p);
		int fds[2];
		if (pipe(fds) != 0)
			return 2;
		errno = 0;
		ssize_t n = write(fds[1], p, 64);  /* a pipe copies the bytes: /dev/null would not */
		printf("guarded=%d write=%zd errno=%s\n", guarded, n, errno == EFAULT ? "EFAULT" : "other");
		return 0;
	}
	if (strcmp(argv[1], "hold") == 0) {
		/* The program's own mappings first (argv[2] of them), then many objects at once. */
		int own = argc > 2 ? atoi(argv[2]) : 0;
		for (int i = 0; i < own; i++)
			mmap(NULL, 4096, i % 2 ? PROT_READ : PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *held[300];
		int guarded = 0;
		for (int i = 0; i < 300; i++) {
			held[i] = malloc(100);
			memset(held[i], i, 100);
			guarded += kf_test_guarded(held[i]);
		}
		int intact = 1;
		for (int i = 0; i < 300; i++) {
			intact &= held[i][99] == (char)i;
			free(held[i]);
		}
		struct kfence_state *s = kf_test_state();
		printf("guarded=%d intact=%d map_failed=%llu\n", guarded, intact,
		       s ? (unsigned long long)s->counters[KFENCE_COUNTER_SKIP_MAP_FAILED] : 0ull);
		return 0;
	}
	/* many allocations, a few large: must all work on glibc */
	long sum = 0;
	for (int i = 0; i < 10000; i++) {
		char *p = malloc((size_t)(i % 300) + 1);
		p[0] = (char)i;
		sum += p[0];
		free(p);
	}
	printf("sum %ld\n", sum);
	kf_test_print_counters();
	return 0;
}
