// nothrow new under a memory limit returns NULL; throwing new throws bad_alloc;
// a new-handler that frees a reserve lets new succeed; one that throws propagates.
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>
static char *reserve;
static int handler_calls;
static void release() { handler_calls++; if (reserve) { delete[] reserve; reserve = nullptr; } else std::set_new_handler(nullptr); }
struct my_error {};
static void thrower() { throw my_error(); }
int main() {
	size_t huge = size_t(1) << 40;
	char *p = new (std::nothrow) char[huge];
	std::printf("nothrow: %s\n", p ? "non-null" : "null");
	try { char *q = new char[huge]; std::printf("no throw?! %p\n", (void *)q); } catch (const std::bad_alloc &) { std::puts("bad_alloc"); }
	reserve = new char[1 << 20];
	std::set_new_handler(release);
	try { char *q = new char[huge]; (void)q; } catch (const std::bad_alloc &) { std::printf("bad_alloc after %d handler calls\n", handler_calls); }
	std::set_new_handler(thrower);
	try { char *q = new char[huge]; (void)q; } catch (const my_error &) { std::puts("handler's exception"); }
	std::set_new_handler(nullptr);
	try { void *q = ::operator new(huge, std::align_val_t(64)); (void)q; } catch (const std::bad_alloc &) { std::puts("aligned bad_alloc"); }
	void *r = ::operator new(huge, std::align_val_t(64), std::nothrow);
	std::printf("aligned nothrow: %s\n", r ? "non-null" : "null");
	return 0;
}
