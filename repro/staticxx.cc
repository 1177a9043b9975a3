// Built -static-libstdc++: its operator delete is its own (a copy that calls free).
// Deleting an object the library made with new is correct C++.
#include <cstdio>
struct Obj { long v[6]; };
Obj *make_obj();
void drop_obj(Obj *o);
int main() {
	for (int i = 0; i < 300; i++) { Obj *o = make_obj(); delete o; }
	Obj *mine[300];
	for (int i = 0; i < 300; i++) mine[i] = new Obj();
	for (int i = 0; i < 300; i++) drop_obj(mine[i]);  // the library deletes what we made
	std::puts("ok");
}
