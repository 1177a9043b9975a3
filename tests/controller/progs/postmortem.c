/*
 * postmortem PLUGIN [keep|fork]: dlopen PLUGIN (after a first sampled
 * allocation has filled the module table), keep one object it allocates,
 * make it read freed memory (not with "keep" or "fork": no report, which
 * would read the maps), and exit: what is left of it is its state file.
 * With "fork", a child keeps an object of the plugin too, in a state file of
 * its own, and exits.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
	if (argc > 2 && strcmp(argv[2], "fork") == 0) {
		pid_t child = fork();
		if (child == 0) {
			keep(48)[0] = 2;
			_exit(0);
		}
		waitpid(child, NULL, 0);
	} else if (argc < 3) {
		printf("read %d\n", uaf());
	}
	free(early);
	return 0;
}
