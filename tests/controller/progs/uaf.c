/* Bugs at known lines, for the symbolizer: the markers name the lines. */
#include <stdlib.h>
#include <string.h>

static char *__attribute__((noinline)) make_record(void)
{
	char *p = malloc(40); /* ALLOC */
	memset(p, 0, 40);
	return p;
}

static void __attribute__((noinline)) retire(char *p)
{
	free(p); /* FREE */
}

static inline __attribute__((always_inline)) void poke(char *p)
{
	p[5] = 1; /* INLINED */
}

static void __attribute__((noinline)) touch(char *p)
{
	poke(p); /* TOUCH */
}

int main(void)
{
	char *p = make_record();
	retire(p);
	touch(p);
	return 0;
}
