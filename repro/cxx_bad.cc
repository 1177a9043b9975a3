#include <cstdlib>
#include <new>
struct T { long a[5]; ~T() {} };
int main(int argc, char **argv) {
	int k = std::atoi(argv[1]);
	switch (k) {
	case 0: { int *p = new int[10]; std::free(p); break; }
	case 1: { int *p = (int *)std::malloc(40); delete p; break; }
	case 2: { int *p = new int; delete[] p; break; }
	case 3: { int *p = new int[10]; std::free(p); delete[] p; break; }   // mismatch, then double free
	case 4: { T *p = new T[3]; ::operator delete[](reinterpret_cast<char *>(p) - 8, 3 * sizeof(T)); break; } // wrong size (cookie forgotten)
	case 5: { T *p = new T[3]; delete[] p; break; }  // good twin
	case 6: { void *p = ::operator new(64, std::align_val_t(64)); ::operator delete(p, 64, std::align_val_t(64)); break; } // good
	case 7: { void *p = ::operator new(64, std::align_val_t(64)); std::free(p); break; } // mismatch
	case 8: { void *p = std::aligned_alloc(64, 64); ::operator delete(p, std::align_val_t(64)); break; } // mismatch
	}
	return 0;
}
