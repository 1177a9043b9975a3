// A library built the usual way (shared libstdc++): it hands out objects made with new.
struct Obj { long v[6]; };
Obj *make_obj() { return new Obj(); }
void drop_obj(Obj *o) { delete o; }
