/*
 * Reports: printing only.  This runs inside the SIGSEGV handler, so nothing
 * here allocates, takes a blocking lock or uses stdio: a fixed buffer, our
 * own formatter, and symbols read straight from the ELF file with mmap.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_internal.h"

/* === Formatter === */

void kf_buf_str(struct kf_buf *b, const char *s)
{
	while (*s && b->len < b->cap)
		b->p[b->len++] = *s++;
}

void kf_buf_dec(struct kf_buf *b, uint64_t v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n && b->len < b->cap)
		b->p[b->len++] = tmp[--n];
}

void kf_buf_hex(struct kf_buf *b, uint64_t v, int width)
{
	char tmp[16];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v || n < width);
	kf_buf_str(b, "0x");
	while (n && b->len < b->cap)
		b->p[b->len++] = tmp[--n];
}

static void kf_buf_time(struct kf_buf *b, uint64_t ns)
{
	char frac[8];
	uint64_t us = (ns / 1000) % 1000000;
	for (int i = 5; i >= 0; i--, us /= 10)
		frac[i] = (char)('0' + us % 10);
	frac[6] = '\0';
	kf_buf_dec(b, ns / 1000000000ull);
	kf_buf_str(b, ".");
	kf_buf_str(b, frac);
	kf_buf_str(b, "s");
}

/* === Symbols === */

/*
 * The ELF file of one module, mapped while a report is written, so that the
 * frames of one stack, mostly in one module, open it once.
 */
static struct {
	uintptr_t base;    /* l_addr of the module, the cache key */
	const uint8_t *map;
	size_t size;
} kf_elf;

static void kf_elf_close(void)
{
	if (kf_elf.map)
		munmap((void *)kf_elf.map, kf_elf.size);
	kf_elf.map = NULL;
	kf_elf.base = 0;
}

static const uint8_t *kf_elf_open(const char *path, uintptr_t base)
{
	if (kf_elf.map && kf_elf.base == base)
		return kf_elf.map;
	kf_elf_close();
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	void *m = MAP_FAILED;
	if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(ElfW(Ehdr)))
		m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return NULL;
	const ElfW(Ehdr) *eh = m;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_shoff + (size_t)eh->e_shnum * sizeof(ElfW(Shdr)) > (size_t)st.st_size) {
		munmap(m, (size_t)st.st_size);
		return NULL;
	}
	kf_elf.map = m;
	kf_elf.size = (size_t)st.st_size;
	kf_elf.base = base;
	return m;
}

/*
 * The function containing vaddr from the module's .symtab (static functions
 * too, which dladdr() cannot see).  Returns the symbol's name and value.
 */
static const char *kf_elf_lookup(const uint8_t *map, size_t size, uintptr_t vaddr,
				 uintptr_t *value)
{
	const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)map;
	const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(map + eh->e_shoff);
	const char *best = NULL;
	uintptr_t best_value = 0;
	for (int i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum)
			continue;
		const ElfW(Shdr) *strs = &sh[sh[i].sh_link];
		if (sh[i].sh_offset + sh[i].sh_size > size || strs->sh_offset + strs->sh_size > size)
			continue;
		const ElfW(Sym) *sym = (const ElfW(Sym) *)(map + sh[i].sh_offset);
		size_t n = sh[i].sh_size / sizeof(ElfW(Sym));
		for (size_t k = 0; k < n; k++) {
			int type = ELF64_ST_TYPE(sym[k].st_info);
			if ((type != STT_FUNC && type != STT_GNU_IFUNC) || !sym[k].st_value ||
			    sym[k].st_value > vaddr || sym[k].st_name >= strs->sh_size)
				continue;
			bool inside = vaddr < sym[k].st_value + (sym[k].st_size ? sym[k].st_size : 1);
			if (inside || sym[k].st_value > best_value) {
				best = (const char *)(map + strs->sh_offset + sym[k].st_name);
				best_value = sym[k].st_value;
				if (inside)
					break;
			}
		}
	}
	*value = best_value;
	return best;
}

static char kf_exe_path[256];

struct kf_frame {
	const char *module;  /* path of the module */
	uintptr_t module_off;
	const char *sym;     /* NULL when unknown */
	uintptr_t sym_off;
};

/* Describe pc; exact is false for return addresses (the call is at pc - 1). */
static void kf_describe(uintptr_t pc, bool exact, struct kf_frame *f)
{
	Dl_info info;
	struct link_map *lm = NULL;
	uintptr_t look = exact ? pc : pc - 1;
	f->module = "?";
	f->module_off = pc;
	f->sym = NULL;
	f->sym_off = 0;
	if (!dladdr1((void *)look, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm)
		return;
	const char *path = lm->l_name && lm->l_name[0] ? lm->l_name : NULL;
	if (!path) {
		if (!kf_exe_path[0]) {
			ssize_t n = readlink("/proc/self/exe", kf_exe_path, sizeof(kf_exe_path) - 1);
			kf_exe_path[n > 0 ? n : 0] = '\0';
		}
		path = kf_exe_path[0] ? kf_exe_path : "/proc/self/exe";
	}
	f->module = path;
	f->module_off = pc - lm->l_addr;
	uintptr_t value;
	const uint8_t *map = kf_elf_open(path, lm->l_addr);
	const char *name = map ? kf_elf_lookup(map, kf_elf.size, look - lm->l_addr, &value) : NULL;
	if (name) {
		f->sym = name;
		f->sym_off = pc - lm->l_addr - value;
	} else if (info.dli_sname && info.dli_saddr) {
		f->sym = info.dli_sname;
		f->sym_off = pc - (uintptr_t)info.dli_saddr;
	}
}

static bool kf_in_libc(const char *module)
{
	const char *base = strrchr(module, '/');
	base = base ? base + 1 : module;
	return strncmp(base, "libc.so", 7) == 0 || strncmp(base, "ld-linux", 8) == 0;
}

static void kf_buf_symbol(struct kf_buf *b, const struct kf_frame *f)
{
	if (!f->sym) {
		kf_buf_str(b, "<unknown>");
		return;
	}
	kf_buf_str(b, f->sym);
	kf_buf_str(b, "+");
	kf_buf_hex(b, f->sym_off, 1);
}

/* " #i 0xpc in sym+0xoff (module+0xoff)" for every frame; the first is exact if fault_pc. */
static void kf_buf_stack(struct kf_buf *b, const struct kfence_stack *st, bool first_exact)
{
	if (!st->depth) {
		kf_buf_str(b, " (no stack)\n");
		return;
	}
	for (uint32_t i = 0; i < st->depth && i < KFENCE_STACK_MAX; i++) {
		struct kf_frame f;
		kf_describe(st->pc[i], first_exact && i == 0, &f);
		kf_buf_str(b, " #");
		kf_buf_dec(b, i);
		kf_buf_str(b, " ");
		kf_buf_hex(b, st->pc[i], 12);
		kf_buf_str(b, " in ");
		kf_buf_symbol(b, &f);
		kf_buf_str(b, " (");
		kf_buf_str(b, f.module);
		kf_buf_str(b, "+");
		kf_buf_hex(b, f.module_off, 1);
		kf_buf_str(b, ")\n");
	}
}

/* === Report === */

static char kf_report_text[65536];
static _Atomic uint32_t kf_report_owner;  /* tid writing a report, 0 if none */

static bool kf_report_lock(void)
{
	uint32_t me = kf_tid(), expected = 0;
	/*
	 * Bounded: a report must never hang its host.  A writer stuck for that
	 * long (stderr a full pipe) costs us this report, not two at once in
	 * one buffer.
	 */
	for (int spins = 0; spins < 200000; spins++) {
		expected = 0;
		if (atomic_compare_exchange_weak(&kf_report_owner, &expected, me))
			return true;
		if (expected == me)
			return false;  /* a fault while reporting: give up this one */
		sched_yield();
	}
	return false;
}

void kf_report_atfork_child(void)
{
	/* The thread that was reporting does not exist in the child. */
	atomic_store(&kf_report_owner, 0);
}

static void kf_report_unlock(void)
{
	atomic_store(&kf_report_owner, 0);
}

/* Why the report file was refused, said once per process; reports go to stderr. */
static void kf_report_file_refused(const char *path, const char *why)
{
	static _Atomic bool warned;
	if (!atomic_exchange(&warned, true))
		kf_warn("not writing reports to ", path, ": ", why, "; reporting to stderr", NULL);
}

int kf_report_fd_open(void)
{
	if (!kf_opt.report_path[0])
		return 2;
	char path[300];
	struct kf_buf b = { path, 0, sizeof(path) - 1 };
	kf_buf_str(&b, kf_opt.report_path);
	kf_buf_str(&b, ".");
	kf_buf_dec(&b, (uint64_t)getpid());
	path[b.len] = '\0';
	/*
	 * Whoever can write to the directory can plant a name there before we
	 * open it: a symbolic link (a root process would append its report to
	 * any file) or a FIFO (open and write would block in the SIGSEGV
	 * handler for good).  So no links, no waiting, and a regular file of
	 * our own, not a second name of another file.  0600, as the state:
	 * stacks and addresses are nobody else's business.
	 */
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
		      0600);
	if (fd < 0) {
		/* strerror() is not async-signal-safe: name the likely causes ourselves. */
		kf_report_file_refused(path, errno == ELOOP ? "it is a symbolic link" :
					     errno == ENXIO ? "it is a FIFO or socket" :
					     errno == EACCES || errno == EPERM ? "permission denied" :
					     "it cannot be opened");
		return 2;
	}
	struct stat st;
	const char *why = fstat(fd, &st) != 0 ? "fstat failed" :
			  !S_ISREG(st.st_mode) ? "it is not a regular file" :
			  st.st_uid != geteuid() ? "it belongs to another user" :
			  st.st_nlink != 1 ? "it has other hard links" : NULL;
	if (why) {
		close(fd);
		kf_report_file_refused(path, why);
		return 2;
	}
	return fd;
}

void kf_report_fd_close(int fd)
{
	if (fd != 2)
		close(fd);
}

static void kf_buf_object(struct kf_buf *b, long slot, const struct kfence_slot *m)
{
	kf_buf_str(b, "kfence-#");
	kf_buf_dec(b, (uint64_t)slot);
	kf_buf_str(b, ": ");
	kf_buf_hex(b, m->addr, 12);
	kf_buf_str(b, "-");
	kf_buf_hex(b, m->addr + (m->size ? m->size - 1 : 0), 12);
	kf_buf_str(b, ", size=");
	kf_buf_dec(b, m->size);
	kf_buf_str(b, ", cache=");
	kf_buf_str(b, kfence_cache_name((int)m->cache) ? kfence_cache_name((int)m->cache) : "?");
	kf_buf_str(b, "\n\nallocated by thread ");
	kf_buf_dec(b, m->alloc_tid);
	kf_buf_str(b, " at ");
	kf_buf_time(b, m->alloc_ns);
	kf_buf_str(b, ":\n");
	kf_buf_stack(b, &m->alloc_stack, false);
	kf_buf_str(b, m->alloc_note);
	if (m->free_tid) {
		kf_buf_str(b, "\nfreed by thread ");
		kf_buf_dec(b, m->free_tid);
		kf_buf_str(b, " at ");
		kf_buf_time(b, m->free_ns);
		kf_buf_str(b, ":\n");
		kf_buf_stack(b, &m->free_stack, false);
		kf_buf_str(b, m->free_note);
	}
}

/* A kind with an access made a read or a write (a fault never says which: read). */
static const char *kf_access_name(int access)
{
	return kfence_access_name(access == KFENCE_ACCESS_WRITE ? access : KFENCE_ACCESS_READ);
}

/* "Out-of-bounds read at 0x... (3B right of kfence-#7):" and its kin. */
static void kf_buf_what(struct kf_buf *b, const struct kf_report_in *in)
{
	const struct kfence_bug_desc *bug = kfence_bug_desc(in->kind);
	kf_buf_str(b, bug->headline);
	if (bug->with_access) {
		kf_buf_str(b, kf_access_name(in->access));
		kf_buf_str(b, " at ");
	}
	kf_buf_hex(b, in->addr, 12);
	if (in->kind == KFENCE_BUG_CORRUPTION) {
		kf_buf_str(b, " [");
		for (int i = 0; i < KFENCE_CORRUPTION_WINDOW; i++) {
			kf_buf_str(b, " ");
			if (in->corrupted_mask & (1u << i))
				kf_buf_hex(b, in->corrupted[i], 2);
			else
				kf_buf_str(b, ".");
		}
		kf_buf_str(b, " ]");
	}
	if (in->slot >= 0) {
		kf_buf_str(b, " (");
		if (in->kind == KFENCE_BUG_OOB) {
			kf_buf_dec(b, (uint64_t)(in->distance < 0 ? -in->distance : in->distance));
			kf_buf_str(b, in->distance < 0 ? "B left of " : "B right of ");
		} else {
			kf_buf_str(b, "in ");
		}
		kf_buf_str(b, "kfence-#");
		kf_buf_dec(b, (uint64_t)in->slot);
		kf_buf_str(b, ")");
	}
	kf_buf_str(b, ":\n");
}

/*
 * Record a report in the shared ring.  The slot is claimed by the atomic
 * add, so no lock is needed: a reader sees the bug even if it is never
 * printed.  (Only 64 reports in flight at once could share a slot.)
 */
static void kf_record(const struct kf_report_in *in, const struct kfence_slot *m)
{
	uint64_t seq = atomic_fetch_add((_Atomic uint64_t *)&kf_state->reports_written, 1) + 1;
	size_t entry = (size_t)((seq - 1) % kf_state->max_reports);
	if (!kf_state_back_report(entry))
		return;  /* the state file is full: counted and printed, not recorded */
	struct kfence_report *r = (struct kfence_report *)((char *)kf_state + kf_state->reports_offset) +
				  entry;
	atomic_store_explicit((_Atomic uint64_t *)&r->sequence, 0, memory_order_relaxed);
	r->kind = (uint32_t)in->kind;
	r->access = (uint32_t)in->access;
	r->addr = in->addr;
	r->distance = in->distance;
	r->slot = (int32_t)in->slot;
	r->tid = kf_tid();
	r->ns = kf_now_ns() - kf_state->start_ns;
	r->stack = *in->stack;
	if (m)
		r->object = *m;
	else
		memset(&r->object, 0, sizeof(r->object));
	memset(r->corrupted, 0, sizeof(r->corrupted));
	if (in->corrupted)
		memcpy(r->corrupted, in->corrupted, sizeof(r->corrupted));
	r->corrupted_mask = in->corrupted_mask;
	atomic_store_explicit((_Atomic uint64_t *)&r->sequence, seq, memory_order_release);
}

/*
 * The report lock timed out (another thread is stuck writing, or we faulted
 * while reporting): one short line instead, written only if the report file
 * or stderr takes it at once.  A full pipe, the likely reason for the
 * timeout, gets nothing.
 */
static void kf_report_fallback(const struct kf_report_in *in)
{
	char line[160];
	struct kf_buf b = { line, 0, sizeof(line) - 1 };
	kf_buf_str(&b, "kfence: BUG: KFENCE: ");
	kf_buf_str(&b, kfence_bug_desc(in->kind)->name);
	kf_buf_str(&b, " at ");
	kf_buf_hex(&b, in->addr, 12);
	kf_buf_str(&b, " in pid ");
	kf_buf_dec(&b, (uint64_t)getpid());
	kf_buf_str(&b, " (full report not printed: another report is being written)");
	line[b.len++] = '\n';
	int saved = errno, fd = kf_report_fd_open();
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
		ssize_t w = write(fd, line, b.len);  /* once: a short write is let go */
		(void)w;
	}
	kf_report_fd_close(fd);
	errno = saved;
}

/* The full report, under the report lock (which it releases). */
static void kf_print(const struct kf_report_in *in, const struct kfence_slot *m)
{
	struct kf_buf b = { kf_report_text, 0, sizeof(kf_report_text) - 80 };
	const char *rule = "==================================================================\n";
	kf_buf_str(&b, rule);
	kf_buf_str(&b, "BUG: KFENCE: ");
	kf_buf_str(&b, kfence_bug_desc(in->kind)->name);
	if (kfence_bug_desc(in->kind)->with_access) {
		kf_buf_str(&b, " ");
		kf_buf_str(&b, kf_access_name(in->access));
	}
	kf_buf_str(&b, " in ");
	const struct kfence_stack *where = in->kind == KFENCE_BUG_LEAK && m ? &m->alloc_stack : in->stack;
	if (where->depth) {
		struct kf_frame f;
		kf_describe(where->pc[0], in->fault_pc != 0, &f);
		/*
		 * Name the code that made the access, not the C library routine it
		 * called (memset, memcpy, strcpy...): the first frame outside libc.
		 */
		for (uint32_t i = 1; i < where->depth && kf_in_libc(f.module); i++)
			kf_describe(where->pc[i], false, &f);
		if (kf_in_libc(f.module))
			kf_describe(where->pc[0], in->fault_pc != 0, &f);
		kf_buf_symbol(&b, &f);
	} else {
		kf_buf_str(&b, "<unknown>");
	}
	kf_buf_str(&b, "\n\n");
	kf_buf_what(&b, in);
	if (in->kind != KFENCE_BUG_LEAK) {
		kf_buf_stack(&b, in->stack, in->fault_pc != 0);
		kf_buf_str(&b, "\n");
	}
	if (m)
		kf_buf_object(&b, in->slot, m);
	kf_buf_str(&b, "\npid ");
	kf_buf_dec(&b, (uint64_t)getpid());
	kf_buf_str(&b, ", thread ");
	kf_buf_dec(&b, kf_tid());
	kf_buf_str(&b, "\n");
	b.cap = sizeof(kf_report_text);
	kf_buf_str(&b, rule);
	kf_elf_close();

	int fd = kf_report_fd_open();
	kf_os_write_all(fd, kf_report_text, b.len);
	kf_report_fd_close(fd);
	kf_report_unlock();
}

bool kf_report(const struct kf_report_in *in)
{
	return kf_report_object(in, NULL);
}

bool kf_report_object(const struct kf_report_in *in, const struct kfence_slot *object)
{
	struct kfence_slot *slot = in->slot >= 0 ? &kf_slots[in->slot] : NULL;
	const struct kfence_slot *m = object ? object : slot;
	/* Once per object and kind; a copy of an object since replaced marks nothing. */
	if (slot && (!object || __atomic_load_n(&slot->alloc_ns, __ATOMIC_RELAXED) == object->alloc_ns)) {
		uint32_t bit = 1u << in->kind;
		if (atomic_fetch_or((_Atomic uint32_t *)&slot->reported, bit) & bit)
			return false;
	}
	bool was_in_lib = kf_self.in_lib;
	kf_self.in_lib = true;
	/*
	 * Recorded and counted before the print lock: the once-per-object bit
	 * is set, so a report the lock loses would otherwise be lost for good,
	 * and with it the exit status.
	 */
	kf_record(in, m);
	kf_count(KFENCE_COUNTER_BUGS, 1);
	bool printed = kf_report_lock();
	if (printed)
		kf_print(in, m);
	else
		kf_report_fallback(in);
	kf_self.in_lib = was_in_lib;
	if (kf_opt.halt_on_error && in->kind != KFENCE_BUG_LEAK)
		abort();
	return printed;
}
