// Correct C++: containers, iostream, exceptions through frames, threads,
// array cookies with sized delete, aligned new, nothrow new, placement new.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
struct D { std::string s = "hello world, long enough to allocate"; ~D() {} };
struct alignas(64) A64 { char c[100]; };
struct alignas(8192) A8k { char c[100]; };
struct Base { virtual ~Base() = default; long a = 1; };
struct Derived : Base { long b[7] = {}; };
static int depth(int n) {
	std::vector<int> v(n + 1, n);
	if (n == 0) throw std::runtime_error(std::string("bottom ") + std::to_string(v[0]));
	return depth(n - 1) + v[0];
}
int main() {
	for (int it = 0; it < 200; it++) {
		D *d = new D[7];                 // cookie: new[] of 7*32+8
		delete[] d;                      // sized delete[] with the cookie's size
		D *one = new D;
		delete one;
		Base *b = new Derived;           // sized delete through a virtual destructor
		delete b;
		A64 *a = new A64;  delete a;     // aligned new, alignment <= the align option?
		A64 *aa = new A64[3]; delete[] aa;
		A8k *k = new A8k; delete k;      // aligned beyond a page
		int *nt = new (std::nothrow) int[100]; delete[] nt;
		alignas(16) char buf[sizeof(D)];
		D *pl = new (buf) D; pl->~D();   // placement new never reaches the allocator
		auto u = std::make_unique<int[]>(33);
		auto sp = std::make_shared<std::vector<std::string>>(10, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
		std::map<int, std::string> m;
		for (int i = 0; i < 20; i++) m[i] = std::to_string(i) + "yyyyyyyyyyyyyyyyyyyyyyyyyyy";
		std::ostringstream os; os << "value " << it << m[3]; std::string s = os.str();
		try { depth(20); } catch (const std::exception &e) { s += e.what(); }
		std::vector<std::thread> ts;
		std::atomic<int> sum{0};
		if (it % 20 == 0) {
			for (int t = 0; t < 4; t++) ts.emplace_back([&] { std::string x(100, 'z'); sum += x.size(); });
			for (auto &t : ts) t.join();
		}
	}
	std::cout << "ok" << std::endl;
	return 0;
}
