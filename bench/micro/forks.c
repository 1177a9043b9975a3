/*
 * fork + wait N times; each child allocates and frees once, then _exit()s,
 * as a shell's $(...) subshell does.  Measures what a fork costs a preloaded
 * process (the state file of each child, with state_dir).
 *
 *   forks N
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* Through a volatile pointer: the compiler may not drop a malloc/free pair. */
static void alloc_once(void)
{
	char *volatile p = malloc(24);
	free(p);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 100;
	for (int i = 0; i < n; i++) {
		alloc_once();
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			alloc_once();
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
	return 0;
}
