/*
 * Prints the value in force of each option named in argv ("name=value", as
 * the preloaded library took it from KFENCE_OPTIONS), then allocates and
 * frees a little and says it ran on.
 */
#include "kftest.h"

int main(int argc, char **argv)
{
	const char *(*value)(const char *) =
		(const char *(*)(const char *))dlsym(RTLD_DEFAULT, "kfence_option_value");
	for (int i = 1; i < argc; i++)
		printf("%s=%s\n", argv[i], value ? value(argv[i]) : "(not preloaded)");
	for (int i = 0; i < 100; i++)
		free(malloc(24));
	kf_test_print_counters();
	printf("ran on\n");
	return 0;
}
