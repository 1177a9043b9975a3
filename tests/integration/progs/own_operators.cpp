// A correct program: it replaces only the two basic operators (as the
// standard allows: the sized, nothrow and array forms call them) with a
// bump allocator of its own.  The sized delete the compiler emits must
// reach the program's operator delete.
#include <cstdio>
#include <cstdlib>
#include <new>
alignas(16) static char arena[1 << 20];
static size_t used;
static int live;
void *operator new(size_t n) {
	n = (n + 15) & ~size_t(15);
	if (used + n > sizeof(arena)) throw std::bad_alloc();
	live++;
	void *p = arena + used;
	used += n;
	return p;
}
void operator delete(void *p) noexcept {
	if (!p) return;
	if ((char *)p < arena || (char *)p >= arena + sizeof(arena)) std::abort();
	live--;
}
struct Node { long v[3]; };
int main() {
	for (int i = 0; i < 1000; i++) {
		Node *n = new Node();           // program's operator new
		delete n;                       // -fsized-deallocation: operator delete(void*, size_t)
		int *a = new int[10];           // operator new[] -> must call the program's new
		delete[] a;
		Node *m = new (std::nothrow) Node();  // nothrow -> must call the program's new
		delete m;
	}
	std::printf("done live=%d\n", live);
	return live != 0;
}
