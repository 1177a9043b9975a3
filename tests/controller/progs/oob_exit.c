/* An out-of-bounds write, reported and recovered from, then an exit that skips
 * the library's exit handler: argv[1] is "exit_group" (the raw system call, as
 * Go's runtime exits: no libc, so only kfence-py run can set the status),
 * "_exit", "_Exit" or "clean". */
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *how = argc > 1 ? argv[1] : "exit_group";
	char *volatile p = malloc(32);
	if (strcmp(how, "clean") != 0)
		p[32] = 1; /* one past the end: the guard page under placement=right */
	if (!strcmp(how, "_Exit"))
		_Exit(0);
	if (!strcmp(how, "_exit"))
		_exit(0);
	for (;;)
		syscall(SYS_exit_group, 0);
}
