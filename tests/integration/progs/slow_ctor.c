/*
 * A library whose constructor waits to be told: dlopen() holds the dynamic
 * loader's lock meanwhile.  It says it is waiting on fd $KFTEST_READY_FD and
 * reads the go-ahead from fd $KFTEST_GO_FD.
 */
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void wait_to_be_told(void)
{
	char c = 1;
	if (write(atoi(getenv("KFTEST_READY_FD")), &c, 1) != 1 ||
	    read(atoi(getenv("KFTEST_GO_FD")), &c, 1) != 1)
		abort();
}
