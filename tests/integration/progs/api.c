/*
 * The malloc family's semantics, printed without addresses, so a run under
 * the preload can be compared line by line with one on plain glibc
 * ("semantics"), plus checks that only hold for guarded objects ("guarded").
 */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <unistd.h>

#include "kftest.h"

#define SHOW(fmt, ...) printf(fmt "\n", __VA_ARGS__)

static int aligned(const void *p, size_t a)
{
	return ((uintptr_t)p % a) == 0;
}

static int all_bytes(const unsigned char *p, size_t n, unsigned char v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static void semantics(void)
{
	void *p;
	int rc;

	p = malloc(0);
	SHOW("malloc(0) nonnull=%d", p != NULL);
	free(p);
	errno = 0;
	p = malloc(SIZE_MAX);
	SHOW("malloc(SIZE_MAX) null=%d errno=%d", p == NULL, errno);
	errno = 1234;
	free(NULL);
	p = malloc(10);
	free(p);
	SHOW("free keeps errno=%d", errno);

	errno = 0;
	p = calloc(SIZE_MAX / 2, 4);
	SHOW("calloc overflow null=%d errno=%d", p == NULL, errno);
	p = calloc(10, 10);
	SHOW("calloc zeroed=%d", all_bytes(p, 100, 0));
	free(p);

	p = realloc(NULL, 10);
	SHOW("realloc(NULL) nonnull=%d", p != NULL);
	p = realloc(p, 0);
	SHOW("realloc(p, 0) null=%d", p == NULL);
	errno = 0;
	p = reallocarray(NULL, SIZE_MAX / 2, 4);
	SHOW("reallocarray overflow null=%d errno=%d", p == NULL, errno);
	p = reallocarray(NULL, 10, 10);
	SHOW("reallocarray nonnull=%d", p != NULL);
	free(p);

	/* A growth chain across the page size and back, contents checked each step. */
	unsigned char *g = malloc(16);
	memset(g, 0x5a, 16);
	size_t have = 16;
	int kept = 1;
	for (size_t n = 32; n <= 16384; n *= 2) {
		g = realloc(g, n);
		kept &= all_bytes(g, have, 0x5a);
		memset(g, 0x5a, n);
		have = n;
	}
	g = realloc(g, 8);
	kept &= all_bytes(g, 8, 0x5a);
	SHOW("realloc chain kept=%d", kept);
	free(g);

	void *m = (void *)1;
	SHOW("posix_memalign(3) rc=%d untouched=%d", posix_memalign(&m, 3, 8), m == (void *)1);
	SHOW("posix_memalign(0) rc=%d", posix_memalign(&m, 0, 8));
	SHOW("posix_memalign(24) rc=%d", posix_memalign(&m, 24, 8));
	rc = posix_memalign(&m, 64, 100);
	SHOW("posix_memalign(64) rc=%d aligned=%d", rc, aligned(m, 64));
	free(m);
	rc = posix_memalign(&m, 8192, 100);
	SHOW("posix_memalign(8192) rc=%d aligned=%d", rc, aligned(m, 8192));
	free(m);
	SHOW("posix_memalign(huge) rc=%d", posix_memalign(&m, 64, SIZE_MAX - 100));

	p = aligned_alloc(64, 100);
	SHOW("aligned_alloc(64) aligned=%d", aligned(p, 64));
	free(p);
	errno = 0;
	p = aligned_alloc(24, 100);
	SHOW("aligned_alloc(24) nonnull=%d errno=%d", p != NULL, errno);
	free(p);
	p = memalign(256, 100);
	SHOW("memalign(256) aligned=%d", aligned(p, 256));
	free(p);
	p = memalign(48, 100);
	SHOW("memalign(48) aligned=%d", aligned(p, 64));
	free(p);
	errno = 0;
	p = memalign(SIZE_MAX, 1);
	SHOW("memalign(SIZE_MAX) null=%d errno=%d", p == NULL, errno);
	p = valloc(100);
	SHOW("valloc aligned=%d", aligned(p, 4096));
	free(p);
	p = pvalloc(100);
	SHOW("pvalloc aligned=%d usable>=page=%d", aligned(p, 4096), malloc_usable_size(p) >= 4096);
	free(p);
	SHOW("malloc_usable_size(NULL)=%zu", malloc_usable_size(NULL));
}

#define CHECK(cond) do { if (!(cond)) { printf("FAILED: %s (line %d)\n", #cond, __LINE__); failed = 1; } } while (0)

static void guarded(void)
{
	int failed = 0;
	unsigned char *p = malloc(100);
	CHECK(kf_test_guarded(p));
	CHECK(malloc_usable_size(p) == 100);
	memset(p, 0x77, 100);

	/* pool -> glibc (too large for a slot) -> pool, contents kept */
	unsigned char *q = realloc(p, 10000);
	CHECK(!kf_test_guarded(q) && all_bytes(q, 100, 0x77));
	unsigned char *r = realloc(q, 50);
	CHECK(kf_test_guarded(r) && all_bytes(r, 50, 0x77));
	r = realloc(r, 80);
	CHECK(kf_test_guarded(r) && all_bytes(r, 50, 0x77) && malloc_usable_size(r) == 80);
	free(r);

	void *m = NULL;
	CHECK(posix_memalign(&m, 256, 100) == 0 && kf_test_guarded(m) && aligned(m, 256));
	free(m);
	m = aligned_alloc(128, 200);
	CHECK(kf_test_guarded(m) && aligned(m, 128));
	free(m);
	m = memalign(64, 1);
	CHECK(kf_test_guarded(m) && aligned(m, 64) && malloc_usable_size(m) == 1);
	free(m);
	m = valloc(100);
	CHECK(kf_test_guarded(m) && aligned(m, 4096));
	free(m);
	m = pvalloc(100);
	CHECK(kf_test_guarded(m) && malloc_usable_size(m) == 4096);
	free(m);
	m = malloc(5000);
	CHECK(!kf_test_guarded(m));
	free(m);
	m = memalign(8192, 16);
	CHECK(!kf_test_guarded(m) && aligned(m, 8192));
	free(m);

	m = malloc(7);
	errno = 4321;
	free(m);
	CHECK(errno == 4321);

	void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
	struct kfence_state *s = kf_test_state();
	uint64_t frees = s->counters[KFENCE_COUNTER_FREES];
	m = malloc(9);
	CHECK(cfree_fn != NULL && kf_test_guarded(m));
	if (cfree_fn)
		cfree_fn(m);
	CHECK(s->counters[KFENCE_COUNTER_FREES] == frees + 1);
	printf("guarded checks %s\n", failed ? "FAILED" : "passed");
}

/* calloc of a reused slot is zeroed (num_objects=1; before stdio allocates). */
static void calloc_reuse(void)
{
	unsigned char *p = malloc(100);
	memset(p, 0xff, 100);
	free(p);
	unsigned char *q = calloc(1, 100);
	int same = ((uintptr_t)p / 4096) == ((uintptr_t)q / 4096), zero = all_bytes(q, 100, 0), g = kf_test_guarded(q);
	free(q);
	printf("calloc reuse same_slot=%d guarded=%d zeroed=%d\n", same, g, zero);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "calloc_reuse") == 0)
		calloc_reuse();
	if (argc > 1 && strcmp(argv[1], "semantics") == 0)
		semantics();
	if (argc > 1 && strcmp(argv[1], "guarded") == 0)
		guarded();
	return 0;
}
