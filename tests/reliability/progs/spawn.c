/*
 * Fork and exec under load: threads keep allocating while the main thread
 * forks (the child allocates, then exits), vforks and execs, and spawns with
 * posix_spawn.  Each child that is preloaded prints its own pid and whether
 * the library's state in it is its own.
 */
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kftest.h"

extern char **environ;
static _Atomic int stop;

static void *churn(void *arg)
{
	(void)arg;
	while (!stop) {
		char *p = malloc(64);
		p[0] = 1;
		p = realloc(p, 300);
		free(p);
	}
	return NULL;
}

static int wait_ok(pid_t pid)
{
	int status;
	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "child") == 0) {
		/* the exec'd child: allocate, and check the state is this process's */
		struct kfence_state *s = kf_test_state();
		for (int i = 0; i < 100; i++)
			free(malloc(50));
		return s && s->pid == (uint32_t)getpid() ? 0 : 3;
	}
	int forks = atoi(argv[1]);
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, churn, NULL);
	int ok_fork = 0, ok_vfork = 0, ok_spawn = 0;
	for (int i = 0; i < forks; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			char *p = malloc(100);
			p = realloc(p, 5000);
			free(p);
			struct kfence_state *s = kf_test_state();
			_exit(s && s->pid == (uint32_t)getpid() ? 0 : 4);
		}
		ok_fork += wait_ok(pid);
	}
	char *child_argv[] = { argv[0], "child", NULL };
	for (int i = 0; i < 10; i++) {
		pid_t pid = vfork();
		if (pid == 0) {
			execve(argv[0], child_argv, environ);
			_exit(5);
		}
		ok_vfork += wait_ok(pid);
		if (posix_spawn(&pid, argv[0], NULL, NULL, child_argv, environ) == 0)
			ok_spawn += wait_ok(pid);
	}
	stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	printf("fork %d/%d vfork %d/10 spawn %d/10\n", ok_fork, forks, ok_vfork, ok_spawn);
	return 0;
}
