/* Plain C functions called through ctypes on guarded buffers. */
#include <stddef.h>

void fill(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = 'z';
}

int peek(const volatile char *p)
{
	return p[0];
}
