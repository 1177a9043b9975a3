// Frees by the wrong family of functions, frees of memory that is not heap,
// and their correct twins: argv[1] names the case.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <pthread.h>

struct Base {
	int a;
};
struct Derived : Base {
	long more[4];
};

static char in_bss[64];
static char in_data[64] = "data";
static const char in_rodata[] = "read-only words";

// Each bug in a function of its own: the report names it.
extern "C" {
__attribute__((noinline)) void new_array_free(void) { char *p = new char[16]; free(p); }
__attribute__((noinline)) void malloc_delete(void) { char *p = (char *)malloc(16); delete p; }
__attribute__((noinline)) void malloc_delete_array(void) { char *p = (char *)malloc(16); delete[] p; }
__attribute__((noinline)) void new_delete_array(void) { int *p = new int; delete[] p; }
__attribute__((noinline)) void new_array_delete(void) { int *p = new int[4]; delete p; }
__attribute__((noinline)) void new_realloc(void) { char *p = new char[16]; p = (char *)realloc(p, 64); free(p); }
__attribute__((noinline)) void mismatch_then_double_free(void)
{
	char *p = new char[16];
	free(p);     // the wrong family: reported, and freed
	delete[] p;  // then freed again: a double free, reported too
}
__attribute__((noinline)) void sized_delete(void) { Base *b = new Derived; ::operator delete(b, sizeof(Base)); }
__attribute__((noinline)) void good_families(void)
{
	int *p = new int;
	delete p;
	int *q = new int[4];
	delete[] q;
	char *r = (char *)malloc(3);
	free(r);
	char *s = (char *)realloc(nullptr, 40);
	s = (char *)realloc(s, 400);
	free(s);
	Derived *d = new Derived;
	delete d;  // sized delete, the right size
	char *n = new (std::nothrow) char[8];
	delete[] n;
}
__attribute__((noinline)) void free_stack(void) { char local[32]; free(local); }
__attribute__((noinline)) void free_bss(void) { free(in_bss + 16); }
__attribute__((noinline)) void free_data(void) { free(in_data); }
__attribute__((noinline)) void free_rodata(void) { free((void *)in_rodata); }
__attribute__((noinline)) void free_text(void) { free((void *)&free_text); }
__attribute__((noinline)) void free_misaligned(void)
{
	char *p = (char *)malloc(40);
	free(p + 8);  // 8-aligned, not 16: never an allocation's start
}
__attribute__((noinline)) void delete_stack(void)
{
	int local[4];
	delete[] local;
}
static void *thread_body(void *arg)
{
	char local[32];
	free(local + 16);
	return arg;
}
__attribute__((noinline)) void free_thread_stack(void)
{
	pthread_t t;
	pthread_create(&t, nullptr, thread_body, nullptr);
	pthread_join(t, nullptr);
}
__attribute__((noinline)) void guard_free(void)
{
	char *p = (char *)malloc(1);
	for (int i = 0; i < 100; i++)
		free(p - 1);  // one byte to the left: the guard page of a left-placed object
}
__attribute__((noinline)) void good_frees(void)
{
	for (int i = 0; i < 20000; i++) {
		void *p = malloc((size_t)(i % 3000) + 1);
		free(p);
		free(nullptr);
	}
	void *a = aligned_alloc(64, 128);
	free(a);
	void *m;
	if (posix_memalign(&m, 32, 100) == 0)
		free(m);
	char *dup = strdup("heap");
	free(dup);
}
}

// A new-handler that frees a reserve: operator new must call it and try again.
static void *reserve;
static int handler_calls;
static void release_reserve()
{
	handler_calls++;
	free(reserve);
	reserve = nullptr;
	std::set_new_handler(nullptr);
}

extern "C" __attribute__((noinline)) void new_semantics(void)
{
	try {
		char *huge = new char[(size_t)1 << 62];
		std::printf("huge new returned %p\n", (void *)huge);
	} catch (const std::bad_alloc &) {
		std::printf("bad_alloc thrown\n");
	}
	char *none = new (std::nothrow) char[(size_t)1 << 62];
	std::printf("nothrow new %s\n", none ? "returned memory" : "returned null");
	reserve = malloc(100);
	std::set_new_handler(release_reserve);
	try {
		char *huge = new char[(size_t)1 << 62];
		delete[] huge;
	} catch (const std::bad_alloc &) {
		std::printf("new-handler called %d time(s), then bad_alloc\n", handler_calls);
	}
	char *zero = new char[0];
	std::printf("new[0] %s\n", zero ? "is unique" : "is null");
	delete[] zero;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(void);
	} cases[] = {
		{ "new_array_free", new_array_free }, { "malloc_delete", malloc_delete },
		{ "malloc_delete_array", malloc_delete_array }, { "new_delete_array", new_delete_array },
		{ "new_array_delete", new_array_delete }, { "new_realloc", new_realloc },
		{ "sized_delete", sized_delete }, { "good_families", good_families },
		{ "mismatch_then_double_free", mismatch_then_double_free },
		{ "free_stack", free_stack }, { "free_bss", free_bss }, { "free_data", free_data },
		{ "free_rodata", free_rodata }, { "free_text", free_text },
		{ "free_misaligned", free_misaligned }, { "delete_stack", delete_stack },
		{ "free_thread_stack", free_thread_stack }, { "guard_free", guard_free },
		{ "good_frees", good_frees }, { "new_semantics", new_semantics },
	};
	for (const auto &c : cases)
		if (argc > 1 && !strcmp(argv[1], c.name)) {
			c.fn();
			std::printf("done\n");
			return 0;
		}
	std::fprintf(stderr, "no case %s\n", argc > 1 ? argv[1] : "(none)");
	return 2;
}
