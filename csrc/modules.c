/*
 * The module table: every executable file mapping that a recorded stack
 * reached, with its load bias and GNU build-id.  It is copied into the
 * state (struct kfence_module), so that the stacks of a process can be
 * turned into module+offset after it has exited, and symbolized on another
 * machine, where the module is found by its build-id (debuginfod).
 *
 * Filled from /proc/self/maps, every executable file mapping of a pass:
 *  - on the slow path, when a captured stack has a pc no entry holds (a
 *    library dlopen()ed since): the first KF_MAPS_FREE_READS times at once,
 *    then at most once a second, since a JIT's anonymous code is in no file
 *    and would ask again at every sample, and the maps of a process with a
 *    big pool take the kernel ~17 ms to print;
 *  - on the report path, which reads the maps anyway for its frames.
 * Entries are appended, never changed: readers take no lock.  One writer at
 * a time, by a flag that is tried, never waited for (the report path runs
 * in the signal handler).  The table lives here, in private memory, so a
 * fork child has its own copy as it was at the fork; the state gets the
 * entries it does not have yet (kf_modules_publish), into file space
 * reserved first.  After a sandbox is announced (prctl), the slow path
 * opens no more files: a seccomp filter could kill the program for it.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <string.h>
#include <unistd.h>

#include "kf_internal.h"

/* The slow path's reads of the maps: so many at once, then one a second at most. */
#define KF_MAPS_FREE_READS 16
#define KF_MAPS_READ_INTERVAL_NS 1000000000ull
/* Program headers read from a module; real ones have about a dozen. */
#define KF_MAX_PHDRS 64

static struct kfence_module kf_mods[KFENCE_MAX_MODULES];
static _Atomic uint32_t kf_nmods;  /* entries [0, kf_nmods) are whole (release) */
static char kf_mod_paths[KFENCE_MODULE_PATHS];  /* "\0", then each entry's path */
static _Atomic uint32_t kf_mod_paths_len = 1;
static _Atomic bool kf_mod_full;  /* no room for one more: nothing more to learn */
static _Atomic uint32_t kf_mod_writer;  /* 1 while a thread appends */
static _Atomic uint64_t kf_mod_next_read;  /* kf_now_ns() before which the slow path waits */
static uint32_t kf_mod_free_reads = KF_MAPS_FREE_READS;  /* the slow path's, left (writer's) */
static _Atomic bool kf_mod_sealed;  /* a sandbox is coming: the slow path opens nothing */

/* === Reading === */

KF_SIGSAFE static bool kf_module_holds(const struct kfence_module *m, uintptr_t pc)
{
	/* A return address may be one past its call's mapping: the end is included. */
	return pc >= m->start && pc <= m->end;
}

KF_SIGSAFE bool kf_modules_known(uintptr_t pc)
{
	if (atomic_load_explicit(&kf_mod_full, memory_order_relaxed))
		return true;
	uint32_t n = atomic_load_explicit(&kf_nmods, memory_order_acquire);
	for (uint32_t i = 0; i < n; i++)
		if (kf_module_holds(&kf_mods[i], pc))
			return true;
	return false;
}

KF_SIGSAFE const char *kf_modules_find(uintptr_t pc, uint64_t *bias)
{
	uint32_t n = atomic_load_explicit(&kf_nmods, memory_order_acquire);
	for (uint32_t i = 0; i < n; i++)
		if (pc >= kf_mods[i].start && pc < kf_mods[i].end) {
			*bias = kf_mods[i].bias;
			return kf_mod_paths + kf_mods[i].path;
		}
	return NULL;
}

KF_SIGSAFE const struct kfence_module *kf_modules_table(uint32_t *count, const char **paths,
							 uint32_t *paths_len)
{
	*count = atomic_load_explicit(&kf_nmods, memory_order_acquire);
	*paths_len = atomic_load_explicit(&kf_mod_paths_len, memory_order_acquire);
	*paths = kf_mod_paths;
	return kf_mods;
}

/* === One module's ELF file: load bias and build-id === */

KF_SIGSAFE static size_t kf_align_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/* The NT_GNU_BUILD_ID note of a PT_NOTE segment, if it holds one; buf is scratch. */
KF_SIGSAFE static void kf_module_build_id(int fd, const ElfW(Phdr) *ph, struct kfence_module *m,
					  uint8_t *buf, size_t cap)
{
	ssize_t got = pread(fd, buf, ph->p_filesz < cap ? ph->p_filesz : cap, (off_t)ph->p_offset);
	if (got <= 0)
		return;
	size_t n = (size_t)got, align = ph->p_align == 8 ? 8 : 4, at = 0;
	while (at + sizeof(ElfW(Nhdr)) <= n) {
		ElfW(Nhdr) nh;
		memcpy(&nh, buf + at, sizeof(nh));
		/* The sizes are the file's: checked before any sum that could wrap. */
		if (nh.n_namesz > n || nh.n_descsz > n)
			return;
		size_t name = at + sizeof(nh);
		size_t desc = name + kf_align_up(nh.n_namesz, align);
		if (desc > n || nh.n_descsz > n - desc)
			return;
		if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && !memcmp(buf + name, "GNU", 4)) {
			/* A longer one would be kept cut short: it would find nothing. */
			if (nh.n_descsz && nh.n_descsz <= KFENCE_BUILD_ID_MAX) {
				memcpy(m->build_id, buf + desc, nh.n_descsz);
				m->build_id_size = nh.n_descsz;
			}
			return;
		}
		at = desc + kf_align_up(nh.n_descsz, align);
	}
}

/*
 * The bias of mapping m: the PT_LOAD segment its file offset lies in (an
 * executable one first: in old layouts a page can hold the end of one
 * segment and the start of the next) gives the link-time address there.
 */
KF_SIGSAFE static bool kf_module_bias(const ElfW(Phdr) *ph, size_t nph, struct kfence_module *m)
{
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < nph; i++) {
			if (ph[i].p_type != PT_LOAD || (pass == 0 && !(ph[i].p_flags & PF_X)))
				continue;
			uint64_t first = ph[i].p_offset & ~(uint64_t)(kf_page - 1);
			if (m->file_offset < first || m->file_offset >= ph[i].p_offset + ph[i].p_filesz)
				continue;
			/* Modular arithmetic: p_vaddr - p_offset is the segment's constant shift. */
			m->bias = m->start - (m->file_offset + ph[i].p_vaddr - ph[i].p_offset);
			return true;
		}
	return false;
}

/* Read the bias and build-id of m from its file fd (only system calls: the report path). */
KF_SIGSAFE static void kf_module_elf(int fd, struct kfence_module *m)
{
	/* Static: one writer at a time, maybe on a small alternate signal stack. */
	static ElfW(Phdr) ph[KF_MAX_PHDRS];
	static uint8_t notes[1024];
	ElfW(Ehdr) eh;
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
	    memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_phentsize != sizeof(ElfW(Phdr)))
		return;
	size_t want = eh.e_phnum < KF_MAX_PHDRS ? eh.e_phnum : KF_MAX_PHDRS;
	ssize_t got = pread(fd, ph, want * sizeof(ph[0]), (off_t)eh.e_phoff);
	if (got <= 0)
		return;
	size_t nph = (size_t)got / sizeof(ph[0]);
	kf_module_bias(ph, nph, m);
	for (size_t i = 0; i < nph && !m->build_id_size; i++)
		if (ph[i].p_type == PT_NOTE)
			kf_module_build_id(fd, &ph[i], m, notes, sizeof(notes));
}

/* === Writing === */

KF_SIGSAFE bool kf_modules_begin(void)
{
	if (atomic_load_explicit(&kf_mod_full, memory_order_relaxed))
		return false;
	return !atomic_exchange_explicit(&kf_mod_writer, 1, memory_order_acquire);
}

KF_SIGSAFE void kf_modules_map(const struct kf_map *map)
{
	uint32_t n = atomic_load_explicit(&kf_nmods, memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++) {
		const struct kfence_module *m = &kf_mods[i];
		const char *path = kf_mod_paths + m->path;
		if (m->start == map->lo && m->end == map->hi && m->file_offset == map->off &&
		    strlen(path) == map->path_len && !memcmp(path, map->path, map->path_len))
			return;
	}
	uint32_t at = atomic_load_explicit(&kf_mod_paths_len, memory_order_relaxed);
	if (n == KFENCE_MAX_MODULES || map->path_len + 1 > sizeof(kf_mod_paths) - at) {
		if (!atomic_exchange(&kf_mod_full, true))
			kf_warn("the module table is full; stacks through modules mapped from now on "
				"are not symbolized after the process exits", NULL);
		return;
	}
	memcpy(kf_mod_paths + at, map->path, map->path_len);
	kf_mod_paths[at + map->path_len] = '\0';
	struct kfence_module *m = &kf_mods[n];
	memset(m, 0, sizeof(*m));
	m->start = map->lo;
	m->end = map->hi;
	m->file_offset = map->off;
	m->path = at;
	/* Without the ELF file, the offset in the file is the best there is (as in reports). */
	m->bias = map->lo - map->off;
	int fd = kf_map_open(kf_mod_paths + at, map->lo, map->hi);
	if (fd >= 0) {
		kf_module_elf(fd, m);
		close(fd);
	}
	atomic_store_explicit(&kf_mod_paths_len, at + (uint32_t)map->path_len + 1,
			      memory_order_release);
	atomic_store_explicit(&kf_nmods, n + 1, memory_order_release);
}

KF_SIGSAFE void kf_modules_publish(struct kfence_state *s)
{
	uint32_t n = atomic_load_explicit(&kf_nmods, memory_order_acquire);
	uint32_t paths_len = atomic_load_explicit(&kf_mod_paths_len, memory_order_acquire);
	uint32_t have = atomic_load_explicit((_Atomic uint32_t *)&s->num_modules,
					     memory_order_relaxed);
	if (have >= n || n > s->max_modules || paths_len > s->paths_size)
		return;
	/* The new entries' paths follow the old ones': from the first new path on. */
	uint32_t from = kf_mods[have].path;
	uint64_t size = sizeof(struct kfence_module);
	if (!kf_state_reserve(s->modules_offset + have * size, (n - have) * size) ||
	    !kf_state_reserve(s->paths_offset + from, paths_len - from))
		return;  /* the state file is full: the private table still names report frames */
	memcpy((char *)s + s->paths_offset + from, kf_mod_paths + from, paths_len - from);
	memcpy((char *)s + s->modules_offset + have * size, &kf_mods[have], (n - have) * size);
	atomic_store_explicit((_Atomic uint32_t *)&s->num_modules, n, memory_order_release);
}

KF_SIGSAFE void kf_modules_end(void)
{
	atomic_store_explicit(&kf_mod_next_read, kf_now_ns() + KF_MAPS_READ_INTERVAL_NS,
			      memory_order_relaxed);
	kf_modules_publish(kf_state);
	atomic_store_explicit(&kf_mod_writer, 0, memory_order_release);
}

KF_SIGSAFE void kf_modules_atfork_child(void)
{
	atomic_store(&kf_mod_writer, 0);
}

/* === The slow path === */

/* One pass over the maps for the table alone; throttled: the slow path's, not a seal's. */
static void kf_modules_read(bool throttled)
{
	static char buf[4096];  /* the writer's */
	if (!kf_modules_begin())
		return;
	if (throttled && !kf_mod_free_reads &&
	    kf_now_ns() < atomic_load_explicit(&kf_mod_next_read, memory_order_relaxed)) {
		atomic_store_explicit(&kf_mod_writer, 0, memory_order_release);
		return;
	}
	if (throttled && kf_mod_free_reads)
		kf_mod_free_reads--;
	kf_maps_read(buf, sizeof(buf), false, true);
	kf_modules_end();
}

void kf_modules_note(const struct kfence_stack *st)
{
	if (atomic_load_explicit(&kf_mod_sealed, memory_order_relaxed) ||
	    atomic_load_explicit(&kf_mod_full, memory_order_relaxed))
		return;
	uint32_t n = atomic_load_explicit(&kf_nmods, memory_order_acquire), hit = 0;
	bool unknown = false;
	for (uint32_t i = 0; i < st->depth && i < KFENCE_STACK_MAX && !unknown; i++) {
		uintptr_t pc = st->pc[i];
		/* Frames in a row are mostly of one module: the last hit first. */
		if (hit < n && kf_module_holds(&kf_mods[hit], pc))
			continue;
		unknown = true;
		for (uint32_t k = 0; k < n && unknown; k++)
			if (kf_module_holds(&kf_mods[k], pc)) {
				hit = k;
				unknown = false;
			}
	}
	if (unknown)
		kf_modules_read(true);
}

void kf_modules_seal(void)
{
	kf_modules_read(false);
	atomic_store(&kf_mod_sealed, true);
}
