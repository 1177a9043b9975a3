// -static-libstdc++ program loading a plugin (built with the shared libstdc++) by dlopen:
// deleting the plugin's objects, and the plugin deleting ours, is correct C++.
#include <cstdio>
#include <dlfcn.h>
struct Obj { long v[6]; };
int main() {
	void *h = dlopen("./libmk.so", RTLD_NOW);
	if (!h) { std::puts(dlerror()); return 2; }
	auto make = (Obj * (*)()) dlsym(h, "_Z8make_objv");
	auto drop = (void (*)(Obj *)) dlsym(h, "_Z8drop_objP3Obj");
	for (int i = 0; i < 300; i++) { Obj *o = make(); delete o; }
	for (int i = 0; i < 300; i++) drop(new Obj());
	std::puts("ok");
}
