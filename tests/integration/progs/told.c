/*
 * A use-after-free once told: the test reads our pid, plants whatever it
 * likes at <report_path>.<pid>, then writes a line to our stdin.
 */
#include <unistd.h>

#include "kftest.h"

int main(void)
{
	char go;
	if (read(0, &go, 1) != 1)
		return 1;
	char *p = malloc(32);
	free(p);
	p[3] = 'x';
	printf("done\n");
	return 0;
}
