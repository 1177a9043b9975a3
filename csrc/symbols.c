/*
 * Symbols for reports, looked up without the dynamic loader: this runs in
 * the SIGSEGV handler, where dladdr() and dl_iterate_phdr() could wait for
 * good on the loader's lock (held by a thread stopped in dlopen, or by a
 * library constructor waiting for the very thread that faulted).
 *
 * So the modules come from /proc/self/maps, read once per report for all
 * its addresses (kf_symbols_begin), and the symbols from the module's own
 * ELF file, mapped read-only: .symtab when it has one (static functions
 * too), else .dynsym.  Only system calls; no allocation, no lock.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_internal.h"

/* Every address of one report: a faulting pc, and the frames of up to three stacks. */
#define KF_MAX_ADDRS (3 * KFENCE_STACK_MAX + 2)  /* three stacks, and an address in data */

/*
 * The executable file mappings earlier reports found, kept for the next
 * ones: a process with a big pool has tens of thousands of maps lines, which
 * the kernel takes ~17 ms to format, and a leak check reports thousands of
 * objects from the same few modules.  /proc/self/maps is read again only
 * for an address no known mapping holds.  (A module unloaded and another
 * mapped at the very same range would be misnamed: not worth a read each.)
 */
#define KF_MAX_MODULES 128
static struct kf_module {
	uint64_t lo, hi, off;  /* [lo, hi) maps the file from offset off */
	uint32_t path;         /* offset in kf_paths */
} kf_modules[KF_MAX_MODULES];
static size_t kf_nmodules;
static char kf_paths[16384];  /* "\0" then each module path once, NUL-terminated */
static size_t kf_paths_len = 1;

/* Where each address of the report lies; valid between begin and end (report lock held). */
static struct kf_where {
	uintptr_t addr;   /* the address looked up */
	uint32_t module;  /* 1 + its index in kf_modules; 0: none */
} kf_where[KF_MAX_ADDRS];
static size_t kf_nwhere;

/*
 * The ELF file of one module, mapped while a report is written, so that the
 * frames of one stack, mostly in one module, open it once.
 */
static struct {
	uint32_t module;  /* the cache key: 1 + index in kf_modules */
	const uint8_t *map;
	size_t size;
} kf_elf;

KF_SIGSAFE static void kf_elf_close(void)
{
	if (kf_elf.map)
		munmap((void *)kf_elf.map, kf_elf.size);
	kf_elf.map = NULL;
	kf_elf.module = 0;
}

/*
 * True when [off, off + len) lies inside a file of size bytes.  The file's
 * offsets and sizes are anybody's: their sum must not wrap around.
 */
KF_SIGSAFE static bool kf_in_file(uint64_t off, uint64_t len, size_t size)
{
	return off <= size && len <= size - off;
}

/*
 * The file of the mapping [lo, hi) of path, as /proc/self/maps names it.
 * One deleted or replaced since it was loaded (an upgrade under a running
 * program, a memfd) is still there through /proc/self/map_files, which
 * opens the very file mapped.
 */
KF_SIGSAFE int kf_map_open(const char *path, uint64_t lo, uint64_t hi)
{
	size_t n = strlen(path);
	const char deleted[] = " (deleted)";
	bool gone = n >= sizeof(deleted) - 1 && !strcmp(path + n - (sizeof(deleted) - 1), deleted);
	int fd = gone ? -1 : open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0)
		return fd;
	char by_range[64] = "/proc/self/map_files/";
	size_t at = strlen(by_range);
	for (int half = 0; half < 2; half++) {
		uint64_t v = half ? hi : lo;
		int digits = 1;
		while (digits < 16 && v >> (4 * digits))
			digits++;
		for (int d = digits - 1; d >= 0; d--)
			by_range[at++] = "0123456789abcdef"[(v >> (4 * d)) & 15];
		by_range[at++] = half ? '\0' : '-';
	}
	return open(by_range, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
}

KF_SIGSAFE static const uint8_t *kf_elf_open(uint32_t module)
{
	if (kf_elf.map && kf_elf.module == module)
		return kf_elf.map;
	kf_elf_close();
	const struct kf_module *mod = &kf_modules[module - 1];
	int fd = kf_map_open(kf_paths + mod->path, mod->lo, mod->hi);
	if (fd < 0)
		return NULL;
	struct stat st;
	void *m = MAP_FAILED;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size >= sizeof(ElfW(Ehdr)))
		m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return NULL;
	const ElfW(Ehdr) *eh = m;
	size_t size = (size_t)st.st_size;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    !kf_in_file(eh->e_shoff, (uint64_t)eh->e_shnum * sizeof(ElfW(Shdr)), size) ||
	    !kf_in_file(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(ElfW(Phdr)), size)) {
		munmap(m, size);
		return NULL;
	}
	kf_elf.map = m;
	kf_elf.size = size;
	kf_elf.module = module;
	return m;
}

/* The link-time address of file offset off (its PT_LOAD segment), or 0 if none holds it. */
KF_SIGSAFE static uintptr_t kf_elf_vaddr(const uint8_t *map, uint64_t off)
{
	const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)map;
	const ElfW(Phdr) *ph = (const ElfW(Phdr) *)(map + eh->e_phoff);
	for (int i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_LOAD && off >= ph[i].p_offset &&
		    off < ph[i].p_offset + ph[i].p_memsz)
			return ph[i].p_vaddr + (off - ph[i].p_offset);
	return 0;
}

/*
 * The function containing vaddr from the symbol tables of type (SHT_SYMTAB
 * or SHT_DYNSYM).  Returns the symbol's name and value.  .symtab names every
 * function, so the nearest one before vaddr is the best guess there; .dynsym
 * names only the exported ones, so there it must contain vaddr (as dladdr()
 * has it), or a static function would be named after the export before it.
 */
KF_SIGSAFE static const char *kf_elf_lookup(const uint8_t *map, size_t size, uint32_t type_wanted,
					    uintptr_t vaddr, uintptr_t *value)
{
	const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)map;
	const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(map + eh->e_shoff);
	const char *best = NULL;
	uintptr_t best_value = 0;
	for (int i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type != type_wanted || sh[i].sh_link >= eh->e_shnum)
			continue;
		const ElfW(Shdr) *strs = &sh[sh[i].sh_link];
		if (!kf_in_file(sh[i].sh_offset, sh[i].sh_size, size) ||
		    !kf_in_file(strs->sh_offset, strs->sh_size, size))
			continue;
		const ElfW(Sym) *sym = (const ElfW(Sym) *)(map + sh[i].sh_offset);
		const char *names = (const char *)(map + strs->sh_offset);
		size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
		for (size_t k = 0; k < n; k++) {
			int type = ELF64_ST_TYPE(sym[k].st_info);
			if ((type != STT_FUNC && type != STT_GNU_IFUNC) || !sym[k].st_value ||
			    sym[k].st_shndx == SHN_UNDEF || sym[k].st_value > vaddr ||
			    sym[k].st_name >= strs->sh_size)
				continue;
			bool inside = vaddr < sym[k].st_value + (sym[k].st_size ? sym[k].st_size : 1);
			if (!inside && type_wanted == SHT_DYNSYM)
				continue;
			/* A name must end inside its table: it is printed up to its NUL. */
			if (!memchr(names + sym[k].st_name, '\0', strs->sh_size - sym[k].st_name))
				continue;
			if (inside || sym[k].st_value > best_value) {
				best = names + sym[k].st_name;
				best_value = sym[k].st_value;
				if (inside) {
					*value = best_value;
					return best;
				}
			}
		}
	}
	*value = best_value;
	return best;
}

/* Parse a hex number at *s, moving past it. */
KF_SIGSAFE static uint64_t kf_hex(const char **s, const char *end)
{
	uint64_t v = 0;
	for (; *s < end; (*s)++) {
		char c = **s;
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			break;
		v = v * 16 + (uint64_t)d;
	}
	return v;
}

/* The offset of path in kf_paths, added if new; 0 when there is no room. */
KF_SIGSAFE static uint32_t kf_path_intern(const char *path, size_t n)
{
	for (size_t at = 1; at < kf_paths_len; at += strlen(kf_paths + at) + 1)
		if (strlen(kf_paths + at) == n && memcmp(kf_paths + at, path, n) == 0)
			return (uint32_t)at;
	if (kf_paths_len + n + 1 > sizeof(kf_paths))
		return 0;
	uint32_t at = (uint32_t)kf_paths_len;
	memcpy(kf_paths + at, path, n);
	kf_paths[at + n] = '\0';
	kf_paths_len += n + 1;
	return at;
}

/* An executable file mapping holds addresses of the report: keep it for them. */
KF_SIGSAFE static void kf_where_map(const struct kf_map *map)
{
	uint32_t module = 0;
	for (size_t i = 0; i < kf_nwhere; i++) {
		struct kf_where *w = &kf_where[i];
		if (w->module || w->addr < map->lo || w->addr >= map->hi)
			continue;
		if (!module) {
			uint32_t interned = kf_path_intern(map->path, map->path_len);
			if (!interned || kf_nmodules == KF_MAX_MODULES)
				return;
			kf_modules[kf_nmodules] = (struct kf_module){ map->lo, map->hi, map->off, interned };
			module = (uint32_t)++kf_nmodules;
		}
		w->module = module;
	}
}

/*
 * One line of /proc/self/maps: "lo-hi perms offset dev inode   path".  An
 * executable mapping of a file goes to the report's addresses (report) and
 * to the module table (modules).
 */
KF_SIGSAFE static void kf_maps_line(const char *s, const char *end, bool report, bool modules)
{
	struct kf_map map;
	map.lo = kf_hex(&s, end);
	s++;
	map.hi = kf_hex(&s, end);
	/*
	 * The permissions: code runs only from executable mappings.  A pc
	 * anywhere else is no frame (a stale one: its module unloaded, the
	 * range reused), and the file there (a data file on a network mount, a
	 * device) is not ours to open from a signal handler.
	 */
	const char *perms = ++s;
	while (s < end && *s != ' ')
		s++;
	if (s - perms < 3 || perms[2] != 'x')
		return;
	s++;
	map.off = kf_hex(&s, end);
	/*
	 * Then the device and the inode, and after spaces the path, if the
	 * mapping has one: a file's starts with '/'.  Anonymous memory has none,
	 * or a name in brackets ("[heap]", "[anon:jit/code]": a '/' in it is no path).
	 */
	for (int field = 0; field < 2; field++) {
		while (s < end && *s == ' ')
			s++;
		while (s < end && *s != ' ')
			s++;
	}
	while (s < end && *s == ' ')
		s++;
	if (s >= end || *s != '/')
		return;
	map.path = s;
	map.path_len = (size_t)(end - s);
	if (report)
		kf_where_map(&map);
	if (modules)
		kf_modules_map(&map);
}

/*
 * Read /proc/self/maps, a line at a time into buf, for the report's
 * addresses and/or the module table.  A line longer than buf (a huge path)
 * is skipped.  False when the file cannot be read.
 */
KF_SIGSAFE bool kf_maps_read(char *buf, size_t cap, bool report, bool modules)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	size_t have = 0;
	bool skipping = false;  /* inside a line too long for buf: up to its end */
	for (;;) {
		ssize_t got = read(fd, buf + have, cap - have);
		if (got <= 0)
			break;
		have += (size_t)got;
		char *start = buf, *nl;
		while ((nl = memchr(start, '\n', have - (size_t)(start - buf)))) {
			if (!skipping)
				kf_maps_line(start, nl, report, modules);
			skipping = false;
			start = nl + 1;
		}
		have -= (size_t)(start - buf);
		memmove(buf, start, have);
		if (have == cap) {
			have = 0;
			skipping = true;
		}
	}
	close(fd);
	return true;
}

/* Addresses of the report in a known mapping; false if one is in none. */
KF_SIGSAFE static bool kf_where_known(void)
{
	bool all = true;
	for (size_t i = 0; i < kf_nwhere; i++) {
		struct kf_where *w = &kf_where[i];
		for (size_t k = 0; k < kf_nmodules && !w->module; k++)
			if (w->addr >= kf_modules[k].lo && w->addr < kf_modules[k].hi)
				w->module = (uint32_t)k + 1;
		/* The state's module table must have it too, for a reader after our exit. */
		all &= w->module != 0 && kf_modules_known(w->addr);
	}
	return all;
}

/* The address looked up for pc: a return address belongs to the call before it. */
KF_SIGSAFE static uintptr_t kf_look(uintptr_t pc, bool exact)
{
	return exact ? pc : pc - 1;
}

KF_SIGSAFE void kf_symbols_begin(void)
{
	/*
	 * A file left open by a report that never ended (a fork while another
	 * thread was reporting) is keyed by an offset into the paths of that
	 * report: in this one the offset may be another module's.
	 */
	kf_elf_close();
	kf_nwhere = 0;
	/* Room for this report's modules: a full table starts over. */
	if (kf_nmodules > KF_MAX_MODULES - 32 || kf_paths_len > sizeof(kf_paths) / 2) {
		kf_nmodules = 0;
		kf_paths[0] = '\0';
		kf_paths_len = 1;
	}
}

KF_SIGSAFE void kf_symbols_want(uintptr_t pc, bool exact)
{
	if (kf_nwhere < KF_MAX_ADDRS)
		kf_where[kf_nwhere++] = (struct kf_where){ .addr = kf_look(pc, exact) };
}

KF_SIGSAFE void kf_symbols_load(void)
{
	if (kf_where_known())
		return;
	/* Static (the report lock is held): this may run on a small alternate signal stack. */
	static char buf[4096];
	/* The same pass fills the module table, unless another thread is at it. */
	bool modules = kf_modules_begin();
	kf_maps_read(buf, sizeof(buf), true, modules);
	if (modules)
		kf_modules_end();
}

KF_SIGSAFE void kf_symbols_end(void)
{
	kf_elf_close();
	kf_nwhere = 0;
}

KF_SIGSAFE void kf_describe(uintptr_t pc, bool exact, struct kf_frame *f)
{
	uintptr_t look = kf_look(pc, exact);
	f->module = "?";
	f->module_off = pc;
	f->sym = NULL;
	f->sym_off = 0;
	const struct kf_where *w = NULL;
	for (size_t i = 0; i < kf_nwhere && !w; i++)
		if (kf_where[i].addr == look && kf_where[i].module)
			w = &kf_where[i];
	if (!w) {
		/*
		 * The maps could not be read (a sandbox refuses open): the module
		 * table, filled before it, still places the frame, without a name.
		 */
		uint64_t bias;
		const char *path = kf_modules_find(look, &bias);
		if (path) {
			f->module = path;
			f->module_off = pc - bias;
		}
		return;
	}
	const struct kf_module *mod = &kf_modules[w->module - 1];
	uint64_t file_off = mod->off + (look - mod->lo);
	f->module = kf_paths + mod->path;
	const uint8_t *map = kf_elf_open(w->module);
	uintptr_t vaddr = map ? kf_elf_vaddr(map, file_off) : 0;
	/* Without the file (not ELF, or unreadable), the file offset is the best we have. */
	f->module_off = (vaddr ? vaddr : file_off) + (pc - look);
	if (!vaddr)
		return;
	uintptr_t value;
	const char *name = kf_elf_lookup(map, kf_elf.size, SHT_SYMTAB, vaddr, &value);
	if (!name)
		name = kf_elf_lookup(map, kf_elf.size, SHT_DYNSYM, vaddr, &value);
	if (name) {
		f->sym = name;
		f->sym_off = vaddr + (pc - look) - value;
	}
}
