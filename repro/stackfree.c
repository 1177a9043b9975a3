#include <stdlib.h>
#include <stdio.h>
int main(void) { char buf[64]; free(buf); puts("after"); return 0; }
