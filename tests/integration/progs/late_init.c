/*
 * The library started after the program installed its SIGSEGV handler:
 * loaded with dlopen() and started with kfence_init(), as the Python package
 * does.  Pool faults are reported and recovered; other faults still reach
 * the program's handler, which was there first.
 */
#include <signal.h>
#include <unistd.h>

#include "kftest.h"

static void info_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	static const char msg[] = "app handler\n";
	write(1, msg, sizeof(msg) - 1);
	_exit(5);
}

int main(int argc, char **argv)
{
	(void)argc;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = info_handler;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);

	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	int (*init)(const char *) = (int (*)(const char *))dlsym(lib, "kfence_init");
	void *(*alloc)(size_t, size_t, int, int, int) =
		(void *(*)(size_t, size_t, int, int, int))dlsym(lib, "kfence_alloc");
	void (*release)(void *) = (void (*)(void *))dlsym(lib, "kfence_free");
	int (*interposing)(void) = (int (*)(void))dlsym(lib, "kfence_is_interposing");
	printf("init=%d interposing=%d\n", init("sample_rate=1"), interposing());
	fflush(stdout);

	volatile char *p = alloc(64, 0, 2, 0, 0);
	release((void *)p);
	p[1] = 'x';
	printf("survived the pool fault\n");
	fflush(stdout);
	*(volatile char *)(uintptr_t)0x10 = 'x';
	printf("not reached\n");
	return 0;
}
