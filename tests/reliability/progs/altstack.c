/*
 * "overflow": a stack overflow caught by the program's handler on its
 * alternate signal stack (our handler runs first, so it must be SA_ONSTACK).
 * "flags": prints whether the handler the kernel holds for SIGSEGV has
 * SA_ONSTACK and SA_SIGINFO (read with the raw system call: sigaction() is
 * interposed and shows the program's own view).
 * "wild": a write to an unmapped address with no handler of the program's.
 */
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kftest.h"

static void on_overflow(int sig)
{
	(void)sig;
	static const char msg[] = "overflow caught on the alternate stack\n";
	write(1, msg, sizeof(msg) - 1);
	_exit(7);
}

static NOINLINE int recurse(volatile char *prev)
{
	volatile char frame[1024];
	frame[0] = prev ? prev[0] + 1 : 0;
	return recurse(frame) + frame[1];
}

struct kernel_sigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	unsigned long mask;
};

int main(int argc, char **argv)
{
	if (strcmp(argv[1], "flags") == 0) {
		struct kernel_sigaction k;
		syscall(SYS_rt_sigaction, SIGSEGV, NULL, &k, 8);
		printf("onstack=%d siginfo=%d\n", !!(k.flags & SA_ONSTACK), !!(k.flags & SA_SIGINFO));
		return 0;
	}
	if (strcmp(argv[1], "wild") == 0) {
		*(volatile char *)(uintptr_t)0x20 = 1;
		return 0;
	}
	stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16 };
	sigaltstack(&ss, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_overflow;
	sa.sa_flags = SA_ONSTACK;
	sigaction(SIGSEGV, &sa, NULL);
	return recurse(NULL);
}
