/* Built with -rdynamic and stripped: only exported_first has a name (in .dynsym). */
#include <stdio.h>
#include <stdlib.h>

static volatile char sink;

__attribute__((noinline)) void exported_first(void)
{
	sink = 1;
}

/* Right after exported_first: not in .dynsym, so it must stay nameless. */
__attribute__((noinline)) static void static_after(void)
{
	char *p = malloc(32);
	sink = p[32];
	free(p);
}

int main(void)
{
	exported_first();
	static_after();
	printf("done\n");
	return 0;
}
