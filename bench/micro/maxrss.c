/*
 * maxrss OUT COMMAND [ARGS...]: run COMMAND, then write "<peak RSS in KiB>
 * <wait status> <wall time in ns>" to the file OUT and exit with COMMAND's
 * status.
 *
 * Peak RSS comes from wait4's ru_maxrss.  Linux carries a process's
 * high-water mark across exec, so measuring from Python would report at least
 * the Python parent's RSS (tens of MiB, more than many workloads): this small
 * program forks the command instead, so the floor is its own few hundred KiB.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s OUT COMMAND [ARGS...]\n", argv[0]);
		return 2;
	}
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	pid_t pid = fork();
	if (pid < 0) {
		perror("maxrss: fork");
		return 2;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		perror("maxrss: exec");
		_exit(127);
	}
	int status;
	struct rusage usage;
	if (wait4(pid, &status, 0, &usage) < 0) {
		perror("maxrss: wait4");
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);
	long long ns = (end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
	FILE *out = fopen(argv[1], "w");
	if (!out) {
		perror("maxrss: open");
		return 2;
	}
	fprintf(out, "%ld %d %lld\n", usage.ru_maxrss, status, ns);
	fclose(out);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}
