/*
 * Userspace versions of KFENCE's own tests: one scenario per argv[1], each in
 * a function of its own name so the report's header can be checked.
 */
#include "kftest.h"

static volatile char sink;

NOINLINE static char *alloc_buffer(size_t n)
{
	return malloc(n);
}

NOINLINE static void oob_read_right(void)
{
	char *p = alloc_buffer(32);
	sink = p[32];
	free(p);
}

NOINLINE static void oob_write_right(void)
{
	char *p = alloc_buffer(32);
	p[32] = 'x';
	free(p);
}

NOINLINE static void oob_read_left(void)
{
	char *p = alloc_buffer(32);
	sink = p[-1];
	free(p);
}

NOINLINE static void oob_write_left(void)
{
	char *p = alloc_buffer(32);
	p[-3] = 'x';
	free(p);
}

NOINLINE static void uaf_read(void)
{
	char *p = alloc_buffer(32);
	free(p);
	sink = p[5];
}

NOINLINE static void uaf_write(void)
{
	char *p = alloc_buffer(32);
	free(p);
	p[5] = 'x';
}

NOINLINE static void double_free(void)
{
	char *p = alloc_buffer(32);
	free(p);
	free(p);
}

NOINLINE static void invalid_free(void)
{
	char *p = alloc_buffer(32);
	free(p + 1);
	free(p);
}

NOINLINE static void corruption(void)
{
	char *p = alloc_buffer(13);  /* right-placed, aligned: 3 canary bytes after it */
	p[13] = 0x42;
	free(p);
}

/* KFENCE's test_kmalloc_aligned_oob_read: 73 bytes, read past the alignment padding. */
NOINLINE static void aligned_oob(void)
{
	char *p = alloc_buffer(73);
	sink = p[73];            /* padding: canary, not a fault */
	sink = p[73 + 7];        /* 8th byte right of the object: the guard page */
	free(p);
}

NOINLINE static void realloc_freed(void)
{
	char *p = alloc_buffer(32);
	free(p);
	char *q = realloc(p, 64);
	printf("realloc of a freed pointer returned %s\n", q ? "a pointer" : "NULL");
}

NOINLINE static void invalid_access(void)
{
	/* A pool page that belongs to no object: the last slot, never handed out. */
	struct kfence_state *s = kf_test_state();
	char *pool = (char *)(uintptr_t)s->pool_start;
	sink = pool[s->pool_size - 2 * s->page_size + 100];
}

NOINLINE static void *make_leak(void)
{
	char *p = alloc_buffer(48);
	memset(p, 1, 48);
	return NULL;
}

static void *kept;

NOINLINE static void leak(void)
{
	make_leak();
	kept = alloc_buffer(64);  /* referenced from a global: not a leak */
}

NOINLINE static void many_frees(void)
{
	for (int i = 0; i < 2000; i++) {
		char *p = alloc_buffer((size_t)(i % 512) + 1);
		memset(p, i, (size_t)(i % 512) + 1);
		free(p);
	}
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} cases[] = {
		{ "oob_read_right", oob_read_right }, { "oob_write_right", oob_write_right },
		{ "oob_read_left", oob_read_left }, { "oob_write_left", oob_write_left },
		{ "uaf_read", uaf_read }, { "uaf_write", uaf_write },
		{ "double_free", double_free }, { "invalid_free", invalid_free },
		{ "corruption", corruption }, { "aligned_oob", aligned_oob },
		{ "realloc_freed", realloc_freed }, { "invalid_access", invalid_access },
		{ "leak", leak }, { "many_frees", many_frees },
	};
	for (int i = 1; i < argc; i++)
		for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
			if (strcmp(argv[i], cases[k].name) == 0)
				cases[k].fn();
	printf("done\n");
	kf_test_print_counters();
	return 0;
}
