/*
 * Signal calls a first review of the mask view missed.  argv[1]:
 *   vfork-sig   a vfork child resets SIGSEGV before exec (as CPython's
 *               subprocess does): the parent's own handler must still run
 *   vfork-mask  a vfork child blocks every signal, its exec fails: the
 *               parent's mask and handler are untouched
 *   sighold     System V sighold(SIGSEGV), then off-by-one reads
 *   sigignore   System V sigignore(SIGSEGV), then off-by-one reads
 *   sigsuspend  off-by-one reads in a handler run while sigsuspend() waits
 *               with every other signal blocked
 */
#include "kftest.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char *page;
static volatile char sink;
static volatile sig_atomic_t got;
static char *bufs[16];

static void open_page(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)si;
	(void)uc;
	mprotect(page, 4096, PROT_READ | PROT_WRITE);
}

static void install_open_page(void)
{
	page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = open_page;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
}

static int vfork_child(int block_all)
{
	install_open_page();
	free(malloc(10));
	pid_t pid = vfork();
	if (pid == 0) {
		if (block_all) {
			sigset_t all;
			sigfillset(&all);
			sigprocmask(SIG_SETMASK, &all, NULL);
			execl("/nonexistent", "x", (char *)NULL);
		} else {
			signal(SIGSEGV, SIG_DFL);
			execl("/bin/true", "true", (char *)NULL);
		}
		_exit(127);
	}
	int status;
	waitpid(pid, &status, 0);
	sigset_t now;
	sigprocmask(SIG_BLOCK, NULL, &now);
	printf("child status %d, parent blocks SIGSEGV: %d\n", WEXITSTATUS(status),
	       sigismember(&now, SIGSEGV));
	page[0] = 1;  /* the parent's handler opens the page */
	printf("parent's handler ran\n");
	return 0;
}

NOINLINE static void off_by_one_reads(void)
{
	for (int i = 0; i < 16; i++)
		sink = bufs[i][32];
}

static void on_usr1(int sig)
{
	(void)sig;
	off_by_one_reads();
	got = 1;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	const char *what = argc > 1 ? argv[1] : "";
	if (!strcmp(what, "vfork-sig") || !strcmp(what, "vfork-mask"))
		return vfork_child(!strcmp(what, "vfork-mask"));
	for (int i = 0; i < 16; i++)
		bufs[i] = malloc(32);
	if (!strcmp(what, "sighold") || !strcmp(what, "sigignore")) {
		if (what[3] == 'h')
			sighold(SIGSEGV);
		else
			sigignore(SIGSEGV);
		off_by_one_reads();
	} else if (!strcmp(what, "sigsuspend")) {
		sigset_t usr1, wait;
		sigemptyset(&usr1);
		sigaddset(&usr1, SIGUSR1);
		sigprocmask(SIG_BLOCK, &usr1, NULL);
		signal(SIGUSR1, on_usr1);
		raise(SIGUSR1);
		sigfillset(&wait);
		sigdelset(&wait, SIGUSR1);
		while (!got)
			sigsuspend(&wait);
	} else {
		return 2;
	}
	printf("done\n");
	return 0;
}
