/*
 * The program's SIGSEGV handling must behave as without the preload: its
 * handler's flags and mask, and its own signal mask.  argv[1] is the case:
 *   nodefer    SA_NODEFER handler leaving with siglongjmp (mask kept), 5 faults
 *   samask     sa_mask {SIGUSR1}: blocked inside the handler, and SIGSEGV too
 *   resethand  SA_RESETHAND: the second fault takes the default action
 *   keep       no SA_NODEFER, left with a mask-keeping jump: SIGSEGV stays
 *              blocked, so the second fault takes the default action
 *   nested     a fault inside a handler without SA_NODEFER: default action
 *   race N     N faults while another thread re-installs the handler in a loop
 *   blocked-pool  every signal blocked, then a worker overflows a malloc'd buffer
 *   blocked-wild  the same with a wild write (and a handler the kernel would skip)
 *   blocked-raise raise(SIGSEGV) while blocked: delivered when unblocked
 *   sigblock   sigblock() of SIGSEGV, then a use-after-free
 *   in-usr1    a use-after-free in a SIGUSR1 handler that blocks every signal
 *   alias      pthread_sigmask(SIG_BLOCK, &m, &m): one set for both
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#include "kftest.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  /* sigblock(), sigmask() */

#define WILD ((volatile char *)(uintptr_t)0x40)

static sigjmp_buf env;
static volatile int handled;
static volatile char sink;

static void say(const char *s)
{
	if (write(1, s, strlen(s)) < 0)
		_exit(99);
}

static int blocked(int sig)
{
	sigset_t now;
	pthread_sigmask(SIG_BLOCK, NULL, &now);
	return sigismember(&now, sig);
}

static void install(void (*fn)(int), int flags, int masked)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = fn;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (masked)
		sigaddset(&sa.sa_mask, masked);
	sigaction(SIGSEGV, &sa, NULL);
}

static void jumping(int sig)
{
	(void)sig;
	handled++;
	siglongjmp(env, 1);
}

static void reporting(int sig)
{
	(void)sig;
	char msg[64];
	snprintf(msg, sizeof(msg), "in handler: usr1=%d segv=%d\n", blocked(SIGUSR1), blocked(SIGSEGV));
	say(msg);
	handled++;
	siglongjmp(env, 1);
}

static void nesting(int sig)
{
	(void)sig;
	say("in handler\n");
	*WILD = 2;
	say("nested fault came back\n");
	_exit(9);
}

NOINLINE static void wild_write(void)
{
	*WILD = 1;
}

/* N faults, each left by the handler with siglongjmp to here. */
static int faults(int n, int savemask)
{
	for (int i = 0; i < n; i++)
		if (sigsetjmp(env, savemask) == 0)
			wild_write();
	return handled;
}

/* --- race: handlers A and B swapped in a loop while the main thread faults --- */

static _Atomic int stop;
static _Atomic long swaps;
static volatile long a_count, b_count, bad;

/* Installed with SA_SIGINFO and SIGUSR1 in its mask. */
static void handler_a(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig != SIGSEGV || si->si_addr != (void *)WILD || !blocked(SIGUSR1) || blocked(SIGUSR2))
		bad++;
	a_count++;
	siglongjmp(env, 1);
}

/* A plain handler with SIGUSR2 in its mask. */
static void handler_b(int sig)
{
	if (sig != SIGSEGV || blocked(SIGUSR1) || !blocked(SIGUSR2))
		bad++;
	b_count++;
	siglongjmp(env, 1);
}

static void *swapper(void *arg)
{
	(void)arg;
	struct sigaction a, b;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.sa_sigaction = handler_a;
	a.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&a.sa_mask);
	sigaddset(&a.sa_mask, SIGUSR1);
	b.sa_handler = handler_b;
	b.sa_flags = SA_NODEFER;
	sigemptyset(&b.sa_mask);
	sigaddset(&b.sa_mask, SIGUSR2);
	for (long i = 0; !atomic_load(&stop); i++) {
		sigaction(SIGSEGV, (i & 1) ? &b : &a, NULL);
		atomic_store(&swaps, i + 1);
	}
	return NULL;
}

static int race(int n)
{
	pthread_t t;
	pthread_create(&t, NULL, swapper, NULL);
	while (atomic_load(&swaps) < 2)
		sched_yield();
	for (int i = 0; i < n; i++)
		if (sigsetjmp(env, 1) == 0)
			wild_write();
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	printf("faults %d a=%ld b=%ld bad=%ld\n", n, a_count, b_count, bad);
	return 0;
}

/* --- blocked: a worker started with every signal blocked --- */

NOINLINE static void overflow_in_worker(void)
{
	char *p = malloc(32);
	p[32] = 'x';
	free(p);
}

static void *worker(void *arg)
{
	if (strcmp(arg, "pool") == 0)
		overflow_in_worker();
	else
		wild_write();
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	printf("worker sees SIGSEGV blocked: %s\n", sigismember(&now, SIGSEGV) ? "yes" : "no");
	return NULL;
}

static void app_handler(int sig)
{
	(void)sig;
	say("app handler\n");
	handled++;
}

static int blocked_worker(const char *what)
{
	install(app_handler, 0, 0);
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_t t;
	pthread_create(&t, NULL, worker, (void *)what);
	pthread_join(t, NULL);
	printf("main sees SIGSEGV blocked: %s\n", blocked(SIGSEGV) ? "yes" : "no");
	printf("survived\n");
	return 0;
}

NOINLINE static void use_after_free(void)
{
	char *p = malloc(64);
	free(p);
	sink = p[3];
}

static void usr1_handler(int sig)
{
	(void)sig;
	use_after_free();
	say("usr1 handler survived\n");
}

int main(int argc, char **argv)
{
	const char *what = argv[1];
	setvbuf(stdout, NULL, _IONBF, 0);
	if (strcmp(what, "nodefer") == 0) {
		install(jumping, SA_NODEFER, 0);
		printf("recovered %d\n", faults(5, 0));
	} else if (strcmp(what, "samask") == 0) {
		install(reporting, 0, SIGUSR1);
		faults(1, 1);
		printf("after: usr1=%d segv=%d\n", blocked(SIGUSR1), blocked(SIGSEGV));
		printf("recovered %d\n", faults(1, 1));
	} else if (strcmp(what, "resethand") == 0) {
		install(jumping, SA_RESETHAND, 0);
		faults(1, 1);
		struct sigaction now;
		sigaction(SIGSEGV, NULL, &now);
		printf("recovered %d, handler now %s\n", handled, now.sa_handler == SIG_DFL ? "SIG_DFL" : "set");
		faults(1, 1);
		printf("second fault survived\n");
	} else if (strcmp(what, "keep") == 0) {
		install(jumping, 0, 0);
		faults(1, 0);
		printf("recovered %d, segv blocked=%d\n", handled, blocked(SIGSEGV));
		faults(1, 0);
		printf("second fault survived\n");
	} else if (strcmp(what, "nested") == 0) {
		install(nesting, 0, 0);
		wild_write();
	} else if (strcmp(what, "race") == 0) {
		return race(atoi(argv[2]));
	} else if (strcmp(what, "blocked-pool") == 0 || strcmp(what, "blocked-wild") == 0) {
		return blocked_worker(what + 8);
	} else if (strcmp(what, "blocked-raise") == 0) {
		install(app_handler, 0, 0);
		sigset_t segv;
		sigemptyset(&segv);
		sigaddset(&segv, SIGSEGV);
		sigprocmask(SIG_BLOCK, &segv, NULL);
		raise(SIGSEGV);
		printf("while blocked: handled %d\n", handled);
		sigprocmask(SIG_UNBLOCK, &segv, NULL);
		printf("after unblock: handled %d\n", handled);
	} else if (strcmp(what, "in-usr1") == 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = usr1_handler;
		sigfillset(&sa.sa_mask);
		sigaction(SIGUSR1, &sa, NULL);
		raise(SIGUSR1);
		printf("survived\n");
	} else if (strcmp(what, "alias") == 0) {
		sigset_t m;
		sigemptyset(&m);
		sigaddset(&m, SIGSEGV);
		pthread_sigmask(SIG_BLOCK, &m, &m);
		printf("old had segv=%d, now segv=%d\n", sigismember(&m, SIGSEGV), blocked(SIGSEGV));
	} else if (strcmp(what, "sigblock") == 0) {
		sigblock((1 << (SIGSEGV - 1)));
		use_after_free();
		printf("survived, segv blocked=%d\n", !!(sigblock(0) & (1 << (SIGSEGV - 1))));
	}
	return 0;
}
