/*
 * postmortem PLUGIN [keep]: dlopen PLUGIN (after a first sampled allocation
 * has filled the module table), keep one object it allocates, make it read
 * freed memory (not with "keep": no report, which would read the maps), and
 * exit: what is left of it is its state file.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	char *early = malloc(32);
	void *h = argc > 1 ? dlopen(argv[1], RTLD_NOW) : NULL;
	if (!h) {
		printf("dlopen: %s\n", dlerror());
		return 2;
	}
	char *(*keep)(size_t) = (char *(*)(size_t))dlsym(h, "plugin_keep");
	int (*uaf)(void) = (int (*)(void))dlsym(h, "plugin_uaf");
	char *kept = keep(40);
	kept[0] = 1;
	if (argc < 3 || strcmp(argv[2], "keep") != 0)
		printf("read %d\n", uaf());
	free(early);
	return 0;
}
