/*
 * A correct program: threads realloc their sampled objects, ask their
 * usable sizes and free them, while the main thread asks for canary sweeps
 * as a controller would (through its own state file, argv[1] its
 * directory) for argv[2] milliseconds.  A sweep holds each live object for
 * a moment; realloc and malloc_usable_size must wait for it.  It counts
 * what went wrong: a realloc that failed or lost the contents, a usable
 * size short of the object's.
 */
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kfence_state.h"

static volatile int stop;
static _Atomic long bad_realloc, bad_usable, rounds;

static void *churn(void *arg)
{
	(void)arg;
	char *keep[32] = { 0 };
	while (!stop) {
		for (int i = 0; i < 32; i++) {
			if (!keep[i]) {
				keep[i] = malloc(64);
				memset(keep[i], 'a', 64);
				continue;
			}
			if (malloc_usable_size(keep[i]) < 64)
				bad_usable++;
			char *q = realloc(keep[i], 64 + (size_t)(i & 1) * 16);
			if (!q || q[0] != 'a' || q[63] != 'a') {
				bad_realloc++;
				if (!q)
					continue;  /* keep[i] is still ours, as C says */
			}
			keep[i] = q;
			if ((i & 7) == 0) {
				free(keep[i]);
				keep[i] = NULL;
			}
		}
		rounds++;
	}
	for (int i = 0; i < 32; i++)
		free(keep[i]);
	return NULL;
}

int main(int argc, char **argv)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%d.state", argv[1], (int)getpid());
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, churn, NULL);
	int fd = open(path, O_RDWR);
	if (fd < 0) {
		perror(path);
		return 2;
	}
	off_t at = (off_t)(offsetof(struct kfence_state, control) +
			   offsetof(struct kfence_control, canary_sweep));
	long ms = atol(argv[2]);
	uint32_t asked = 0;
	for (long us = 0; us < ms * 1000; us += 200) {
		asked++;
		if (pwrite(fd, &asked, sizeof(asked), at) != (ssize_t)sizeof(asked))
			return 2;
		usleep(200);
	}
	close(fd);
	stop = 1;
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	printf("bad_realloc=%ld bad_usable=%ld rounds=%ld asked=%u\n", (long)bad_realloc,
	       (long)bad_usable, (long)rounds, asked);
	return 0;
}
