/*
 * A library that postmortem.c dlopen()s after it has started: its frames
 * are placed through the module table only if the library recorded the
 * module when a stack first reached it.
 */
#include <stdlib.h>

char *plugin_keep(size_t n)
{
	return malloc(n); /* plugin_keep */
}

int plugin_uaf(void)
{
	volatile char *p = malloc(24); /* plugin_uaf_alloc */
	free((void *)p);
	return p[3]; /* plugin_uaf_use */
}
