/*
 * The do-nothing interposer: the cheapest possible LD_PRELOAD malloc, which
 * forwards every call to glibc's own entry points and does nothing else.  It
 * is the floor any interposing allocator pays (the indirection through the
 * preloaded library), so libkfence's unsampled hot path is measured against it.
 */
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

void *malloc(size_t size)
{
	return __libc_malloc(size);
}

void free(void *p)
{
	__libc_free(p);
}

void *calloc(size_t nmemb, size_t size)
{
	return __libc_calloc(nmemb, size);
}

void *realloc(void *p, size_t size)
{
	return __libc_realloc(p, size);
}
