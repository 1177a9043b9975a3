/*
 * An out-of-bounds read while the thread has a small alternate signal stack
 * (AT_MINSIGSTKSZ plus argv[1] KiB, with a guard page below it, as Rust and
 * Go make theirs): the report runs on it and must fit.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/mman.h>

#ifndef AT_MINSIGSTKSZ
#define AT_MINSIGSTKSZ 51
#endif

static volatile char sink;

__attribute__((noinline)) static void overflow(void)
{
	char *p = malloc(32);
	sink = p[32];
	free(p);
}

int main(int argc, char **argv)
{
	size_t page = 4096, min = getauxval(AT_MINSIGSTKSZ);
	size_t size = (min ? min : 2048) + strtoul(argv[1], NULL, 0) * 1024;
	char *m = mmap(NULL, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED || mprotect(m, page, PROT_NONE))
		return 2;
	stack_t ss = { .ss_sp = m + page, .ss_size = size };
	if (sigaltstack(&ss, NULL))
		return 2;
	overflow();
	printf("done\n");
	return 0;
}
