// C++ allocation reaches the interposed malloc family: plain, array,
// over-aligned and sized new/delete.
#include <cstdint>
#include <cstdio>
#include <new>

#include "kftest.h"

struct alignas(64) Wide {
	char bytes[200];
};

struct alignas(8192) Huge {
	char bytes[16];
};

int main()
{
	int failed = 0;
	int *one = new int(7);
	failed |= !kf_test_guarded(one);
	delete one;

	int *many = new int[10]();
	failed |= !kf_test_guarded(many) || many[9] != 0;
	delete[] many;

	Wide *w = new Wide();
	failed |= !kf_test_guarded(w) || (reinterpret_cast<uintptr_t>(w) % 64) != 0;
	delete w;  // sized, aligned delete

	Huge *h = new Huge();
	failed |= kf_test_guarded(h) || (reinterpret_cast<uintptr_t>(h) % 8192) != 0;
	delete h;

	char *buf = static_cast<char *>(::operator new(100));
	failed |= !kf_test_guarded(buf);
	::operator delete(buf, 100);  // sized delete

	std::printf("c++ checks %s\n", failed ? "FAILED" : "passed");
	kf_test_print_counters();
	return 0;
}
