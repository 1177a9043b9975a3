/*
 * A process for the controller tests to drive: one command a line on stdin,
 * one answer a line on stdout, so that a test knows what it did before it
 * looks at its state (no sleeps).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *held[4096];
static int nheld;
static pid_t child;
static volatile sig_atomic_t interrupts;

static void __attribute__((noinline)) churn(long n)
{
	for (long i = 0; i < n; i++) {
		char *volatile p = malloc(32);
		p[0] = 1;
		free(p);
	}
}

static void hold(long n)
{
	for (long i = 0; i < n && nheld < 4096; i++)
		held[nheld++] = malloc(48);
}

static void on_term(int sig)
{
	char msg[] = "got signal 00\n";
	msg[11] = (char)('0' + sig / 10);
	msg[12] = (char)('0' + sig % 10);
	write(1, msg, sizeof(msg) - 1);
	_exit(7);
}

static void on_int(int sig)
{
	(void)sig;
	interrupts++;
}

/* A child that holds objects of its own and waits to be killed. */
static void spawn_child(void)
{
	int fds[2];
	if (pipe(fds) != 0)
		exit(90);
	fflush(stdout);
	child = fork();
	if (child == 0) {
		hold(3);
		close(fds[0]);
		write(fds[1], "x", 1);
		for (;;)
			pause();
	}
	close(fds[1]);
	char c;
	read(fds[0], &c, 1);  /* the child has allocated */
	close(fds[0]);
	printf("child %d\n", (int)child);
}

int main(void)
{
	char line[128];
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		long n = 0;
		char cmd[32] = "";
		sscanf(line, "%31s %ld", cmd, &n);
		if (!strcmp(cmd, "churn")) {
			churn(n);
		} else if (!strcmp(cmd, "hold")) {
			hold(n);
		} else if (!strcmp(cmd, "release")) {
			while (nheld)
				free(held[--nheld]);
		} else if (!strcmp(cmd, "fork")) {
			spawn_child();
		} else if (!strcmp(cmd, "trap-term")) {
			signal(SIGTERM, on_term);
		} else if (!strcmp(cmd, "trap-int")) {
			signal(SIGINT, on_int);
		} else if (!strcmp(cmd, "interrupts")) {
			printf("interrupts %d\n", (int)interrupts);
		} else if (!strcmp(cmd, "uaf")) {
			char *volatile p = malloc(24);
			free(p);
			p[2] = 1;
		} else if (!strcmp(cmd, "smash") && nheld) {
			/* One byte past the last held object: its page's canary (placement=left). */
			((char *volatile)held[nheld - 1])[48] = 'x';
		} else if (!strcmp(cmd, "exit")) {
			exit((int)n);
		} else if (!strcmp(cmd, "raise")) {
			raise((int)n);
		} else if (!strcmp(cmd, "quit")) {
			break;
		} else {
			printf("unknown %s\n", cmd);
			fflush(stdout);
			continue;
		}
		printf("ok\n");
		fflush(stdout);
	}
	if (child > 0) {
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
	}
	return 0;
}
