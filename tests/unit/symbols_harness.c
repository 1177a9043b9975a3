/*
 * csrc/symbols.c on a maps file of the test's making: "/proc/self/maps" is
 * opened as the maps file given.  Arguments: MAPS ADDR... [-- MAPS ADDR...]:
 * one report's symbols per group, addresses looked up as faulting pcs; one
 * line per address: module|module_off|symbol|symbol_off.  Only the last
 * group is ended (kf_symbols_end): the others are reports cut short, as a
 * fork in the middle of another thread's report leaves one in the child.
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
	for (int first = 1; first < argc;) {
		int last = first + 1;
		while (last < argc && strcmp(argv[last], "--") != 0)
			last++;
		fake_maps = argv[first];
		/* Each group is a process of its own: nothing known of the last one's modules. */
		kf_nmodules = 0;
		kf_paths_len = 1;
		kf_symbols_begin();
		for (int i = first + 1; i < last; i++)
			kf_symbols_want((uintptr_t)strtoull(argv[i], NULL, 0), true);
		kf_symbols_load();
		for (int i = first + 1; i < last; i++) {
			struct kf_frame f;
			kf_describe((uintptr_t)strtoull(argv[i], NULL, 0), true, &f);
			printf("%s|%#lx|%s|%#lx\n", f.module, (unsigned long)f.module_off,
			       f.sym ? f.sym : "-", (unsigned long)f.sym_off);
		}
		first = last + 1;
	}
	kf_symbols_end();
	return 0;
}
