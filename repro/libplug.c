#include <stdlib.h>
static char big_bss[4 << 20];
char *plug_alloc(size_t n) { big_bss[0] = 1; return malloc(n); }
