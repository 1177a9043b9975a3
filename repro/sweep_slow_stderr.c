/*
 * A sweep reports a corrupted live object while stderr (a pipe to a slow
 * reader) is full; meanwhile another thread frees that object, correctly.
 * The free must not be called invalid.  argv[1]: the state directory.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../csrc/kfence_state.h"
static char *obj;
static void *freer(void *x) { (void)x; usleep(100000); free(obj); puts("freed"); fflush(stdout); return NULL; }
int main(int argc, char **argv) {
	obj = malloc(16);
	obj[17] = 'x';
	pthread_t t; pthread_create(&t, NULL, freer, NULL);
	int fl = fcntl(2, F_GETFL);
	fcntl(2, F_SETFL, fl | O_NONBLOCK);
	char junk[4096]; memset(junk, '.', sizeof(junk)); junk[4095] = '\n';
	while (write(2, junk, sizeof(junk)) > 0) {}
	fcntl(2, F_SETFL, fl);
	char path[4096]; snprintf(path, sizeof(path), "%s/%d.state", argv[1], (int)getpid());
	int fd = open(path, O_RDWR);
	uint32_t one = 1;
	pwrite(fd, &one, 4, offsetof(struct kfence_state, control) + offsetof(struct kfence_control, canary_sweep));
	free(malloc(8));  /* a sampled allocation serves the sweep: it reports, and blocks on stderr */
	pthread_join(t, NULL);
	return 0;
}
