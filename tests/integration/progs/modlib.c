/* A library with a bug in a static function, called through an exported one. */
#include <stdlib.h>

static volatile char sink;

__attribute__((noinline)) static char *lib_alloc(size_t n)
{
	return malloc(n);
}

__attribute__((noinline)) static void lib_static_oob(void)
{
	char *p = lib_alloc(32);
	sink = p[32];
	free(p);
}

__attribute__((noinline)) void lib_exported_oob(void)
{
	lib_static_oob();
}
