/*
 * A small program with three heap bugs, run by `kfence-py demo` under the
 * preload (sample_rate=1, placement=right) to show what reports look like.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct record {
	char name[24];
	int id;
};

static struct record *make_record(const char *name, int id)
{
	struct record *r = malloc(sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", name);
	r->id = id;
	return r;
}

/* Bug 1: writes one byte past the end of a 64-byte buffer. */
static void fill_line(char *line, size_t n)
{
	for (size_t i = 0; i <= n; i++)
		line[i] = '-';
}

/* Bug 2: uses the record after handing it back. */
static int retire(struct record *r)
{
	free(r);
	return r->id;
}

/* Bug 3: a 13-byte string with room for 12 characters and no terminator. */
static char *copy_title(void)
{
	char *title = malloc(13);
	memcpy(title, "kfence-demo!!", 14);
	return title;
}

int main(void)
{
	char *line = malloc(64);
	fill_line(line, 64);
	free(line);

	struct record *r = make_record("alice", 7);
	printf("retired record %d\n", retire(r));

	char *title = copy_title();
	printf("title: %.13s\n", title);
	free(title);
	return 0;
}
