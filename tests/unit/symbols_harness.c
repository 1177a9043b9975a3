/*
 * csrc/symbols.c on a maps file of the test's making: "/proc/self/maps" is
 * opened as argv[1].  argv[2..] are addresses (faulting pcs, looked up as
 * they are); one line per address: module|module_off|symbol|symbol_off.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fake_maps;

static int harness_open(const char *path, int flags, ...)
{
	return open(strcmp(path, "/proc/self/maps") == 0 ? fake_maps : path, flags);
}

#define open harness_open
#include "symbols.c"
#undef open

int main(int argc, char **argv)
{
	fake_maps = argv[1];
	kf_symbols_begin();
	for (int i = 2; i < argc; i++)
		kf_symbols_want((uintptr_t)strtoull(argv[i], NULL, 0), true);
	kf_symbols_load();
	for (int i = 2; i < argc; i++) {
		struct kf_frame f;
		kf_describe((uintptr_t)strtoull(argv[i], NULL, 0), true, &f);
		printf("%s|%#lx|%s|%#lx\n", f.module, (unsigned long)f.module_off,
		       f.sym ? f.sym : "-", (unsigned long)f.sym_off);
	}
	kf_symbols_end();
	return 0;
}
