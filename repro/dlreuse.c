/* dlopen, dlclose, then heap memory mapped where the module was; re-dlopen; free all of it. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
int main(void) {
	void *keep[200]; int n = 0;
	for (int round = 0; round < 20; round++) {
		void *h = dlopen("./libplug.so", RTLD_NOW);
		if (!h) { puts(dlerror()); return 2; }
		char *(*f)(size_t) = (char *(*)(size_t))dlsym(h, "plug_alloc");
		keep[n++] = f(100);
		dlclose(h);
		for (int i = 0; i < 5; i++) keep[n++] = malloc(1 << 20);  /* mmapped: may land where the module was */
		void *m = mmap(NULL, 8 << 20, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		munmap(m, 8 << 20);
	}
	for (int i = 0; i < n; i++) free(keep[i]);
	puts("ok");
	return 0;
}
