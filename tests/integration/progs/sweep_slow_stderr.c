/*
 * A sweep reports a corrupted live object while stderr (a pipe its reader
 * leaves full for a while) holds the report up; meanwhile another thread
 * frees that object, as it may.  The free must not be called invalid.
 * argv[1]: the state directory (the program asks for the sweep itself).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kfence_state.h"

static char *obj;

static void *freer(void *arg)
{
	(void)arg;
	usleep(100000);  /* the sweep's report is stuck on stderr by now */
	free(obj);
	puts("freed");
	fflush(stdout);
	return NULL;
}

int main(int argc, char **argv)
{
	(void)argc;
	obj = malloc(16);
	obj[17] = 'x';  /* in the canary of a left-placed object */
	pthread_t t;
	pthread_create(&t, NULL, freer, NULL);
	/* Fill stderr's pipe. */
	int flags = fcntl(2, F_GETFL);
	fcntl(2, F_SETFL, flags | O_NONBLOCK);
	char junk[4096];
	memset(junk, '.', sizeof(junk));
	junk[sizeof(junk) - 1] = '\n';
	while (write(2, junk, sizeof(junk)) > 0) {
	}
	fcntl(2, F_SETFL, flags);
	char path[4096];
	snprintf(path, sizeof(path), "%s/%d.state", argv[1], (int)getpid());
	int fd = open(path, O_RDWR);
	uint32_t one = 1;
	if (fd < 0 || pwrite(fd, &one, sizeof(one), offsetof(struct kfence_state, control) +
			     offsetof(struct kfence_control, canary_sweep)) != sizeof(one))
		return 2;
	free(malloc(8));  /* a sampled allocation serves the sweep */
	pthread_join(t, NULL);
	return 0;
}
