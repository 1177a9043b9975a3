/*
 * Signal handler chaining.  argv[1] says when the program installs its own
 * SIGSEGV handler and what kind; argv[2] which fault to take:
 *   pool  - a use-after-free of a guarded object (ours: report, recover)
 *   null  - a write to an unmapped address (theirs)
 *   kill  - raise(SIGSEGV) (theirs: not a fault)
 */
#include <signal.h>
#include <unistd.h>

#include "kftest.h"

static volatile char sink;

static void plain_handler(int sig)
{
	static const char msg[] = "app plain handler\n";
	write(1, msg, sizeof(msg) - 1);
	_exit(sig == SIGSEGV ? 3 : 4);
}

static void info_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char msg[] = "app siginfo handler, code>0: ?\n";
	msg[sizeof(msg) - 3] = si->si_code > 0 ? 'y' : 'n';
	write(1, msg, sizeof(msg) - 1);
	_exit(sig == SIGSEGV ? 5 : 6);
}

static struct sigaction previous;

/* Python faulthandler's way: put the previous handler back and re-raise. */
static void restoring_handler(int sig)
{
	static const char msg[] = "app restoring handler\n";
	write(1, msg, sizeof(msg) - 1);
	sigaction(sig, &previous, NULL);
	raise(sig);
}

static void install(const char *how)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	if (strcmp(how, "plain") == 0) {
		sa.sa_handler = plain_handler;
	} else if (strcmp(how, "siginfo") == 0) {
		sa.sa_sigaction = info_handler;
		sa.sa_flags = SA_SIGINFO;
	} else if (strcmp(how, "restoring") == 0) {
		sa.sa_handler = restoring_handler;
		sa.sa_flags = SA_NODEFER;
	} else if (strcmp(how, "signal") == 0) {
		signal(SIGSEGV, plain_handler);
		return;
	} else if (strcmp(how, "ignore") == 0) {
		sa.sa_handler = SIG_IGN;
	} else {
		return;  /* "none": SIG_DFL */
	}
	sigaction(SIGSEGV, &sa, &previous);
}

/* A handler installed from a constructor of the program, before main(). */
__attribute__((constructor(101))) static void early(void)
{
	const char *how = getenv("APP_HANDLER_EARLY");
	if (how)
		install(how);
}

NOINLINE static void pool_fault(void)
{
	char *p = malloc(64);
	free(p);
	p[1] = 'x';
}

NOINLINE static void wild_fault(void)
{
	*(volatile char *)(uintptr_t)0x10 = 'x';
}

int main(int argc, char **argv)
{
	install(argv[1]);
	struct sigaction now;
	sigaction(SIGSEGV, NULL, &now);
	printf("sigaction reports the app's handler: %s\n",
	       strcmp(argv[1], "none") == 0 ? (now.sa_handler == SIG_DFL ? "yes" : "no")
	       : strcmp(argv[1], "ignore") == 0 ? (now.sa_handler == SIG_IGN ? "yes" : "no")
	       : (now.sa_handler != SIG_DFL && now.sa_handler != SIG_IGN ? "yes" : "no"));
	fflush(stdout);
	if (strcmp(argv[2], "pool") == 0)
		pool_fault();
	else if (strcmp(argv[2], "null") == 0)
		wild_fault();
	else if (strcmp(argv[2], "kill") == 0)
		raise(SIGSEGV);
	printf("survived\n");
	return 0;
}
