/*
 * csrc/symbols.c on a maps file of the test's making: "/proc/self/maps" is
 * opened as the maps file given.  Arguments: MAPS ADDR... [-- MAPS ADDR...]:
 * one report's symbols per group, addresses looked up as faulting pcs; one
 * line per address: module|module_off|symbol|symbol_off.  Only the last
 * group is ended (kf_symbols_end): the others are reports cut short, as a
 * fork in the middle of another thread's report leaves one in the child.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fake_maps;

static int harness_open(const char *path, int flags, ...)
{
	return open(strcmp(path, "/proc/self/maps") == 0 ? fake_maps : path, flags);
}

#define open harness_open
#include "symbols.c"
#include "modules.c"
#undef open

/* What modules.c needs of the rest of the library. */
size_t kf_page = 4096;
struct kfence_state *kf_state;

uint64_t kf_now_ns(void)
{
	return 0;
}

bool kf_state_reserve(uint64_t off, uint64_t len)
{
	(void)off;
	(void)len;
	return true;  /* private memory */
}

void kf_warn(const char *first, ...)
{
	fprintf(stderr, "kfence: %s\n", first);
}

/* A state with an empty module table, as kf_state_new makes it. */
static struct kfence_state *harness_state(void)
{
	size_t modules = sizeof(struct kfence_state);
	size_t paths = modules + KFENCE_MAX_MODULES * sizeof(struct kfence_module);
	struct kfence_state *s = calloc(1, paths + KFENCE_MODULE_PATHS);
	s->modules_offset = modules;
	s->paths_offset = paths;
	s->module_size = sizeof(struct kfence_module);
	s->max_modules = KFENCE_MAX_MODULES;
	s->paths_size = KFENCE_MODULE_PATHS;
	return s;
}

static void harness_print_modules(const struct kfence_state *s)
{
	const struct kfence_module *m = (const void *)((const char *)s + s->modules_offset);
	for (uint32_t i = 0; i < s->num_modules; i++, m++) {
		fprintf(stderr, "%#lx|%#lx|%#lx|%s|", (unsigned long)m->start, (unsigned long)m->end,
			(unsigned long)m->bias, (const char *)s + s->paths_offset + m->path);
		for (uint32_t k = 0; k < m->build_id_size; k++)
			fprintf(stderr, "%02x", m->build_id[k]);
		fprintf(stderr, "\n");
	}
}

int main(int argc, char **argv)
{
	for (int first = 1; first < argc;) {
		int last = first + 1;
		while (last < argc && strcmp(argv[last], "--") != 0)
			last++;
		fake_maps = argv[first];
		/* Each group is a process of its own: nothing known of the last one's modules. */
		kf_nmodules = 0;
		kf_paths_len = 1;
		kf_nmods = 0;
		kf_mod_paths_len = 1;
		free(kf_state);
		kf_state = harness_state();
		kf_symbols_begin();
		for (int i = first + 1; i < last; i++)
			kf_symbols_want((uintptr_t)strtoull(argv[i], NULL, 0), true);
		kf_symbols_load();
		for (int i = first + 1; i < last; i++) {
			struct kf_frame f;
			kf_describe((uintptr_t)strtoull(argv[i], NULL, 0), true, &f);
			printf("%s|%#lx|%s|%#lx\n", f.module, (unsigned long)f.module_off,
			       f.sym ? f.sym : "-", (unsigned long)f.sym_off);
		}
		harness_print_modules(kf_state);
		first = last + 1;
	}
	kf_symbols_end();
	return 0;
}
