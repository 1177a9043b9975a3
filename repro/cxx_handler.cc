#include <cstdio>
#include <new>
struct my_error {};
static void thrower() { throw my_error(); }
int main() {
	std::set_new_handler(thrower);
	char *volatile q = nullptr;
	try { q = new char[size_t(1) << 40]; } catch (const my_error &) { std::puts("handler's exception"); }
	try { q = static_cast<char *>(::operator new(size_t(1) << 40, std::align_val_t(64))); } catch (const my_error &) { std::puts("aligned: handler's exception"); }
	std::set_new_handler(nullptr);
	q = new (std::nothrow) char[size_t(1) << 40];
	std::printf("%p\n", (void *)q);
	return 0;
}
