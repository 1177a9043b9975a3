/*
 * The state file: with state_dir, the state lives in <state_dir>/<pid>.state,
 * a shared mapping the controller reads and writes the control block of.
 *
 * A file mapping can kill its host: a write through it into a page the file
 * system cannot back (a full disk, a full tmpfs) is a SIGBUS, and growing a
 * file past RLIMIT_FSIZE is a SIGXFSZ.  So the file is sized only within
 * that limit, and nothing is written through the mapping into a page that
 * was not reserved first (fallocate): the header and the report ring when
 * the file is made, a slot's metadata when the slot is first used.  On tmpfs
 * even a read of a hole allocates, so unreserved slots are not read either
 * (kf_slot_backed).  The file stays sparse: it costs what is in use.
 *
 * A new process (fork, or a raw clone() that ran no atfork handler) must not
 * write its parent's file: kf_state_publish() gives it a file of its own,
 * with a copy of the header and the slots in use.  The parent goes on
 * changing its file meanwhile, so the copy is checked against the child's
 * own record of each slot (kf_shadow, private memory, which the kernel
 * copied at the fork): a slot the parent has changed since is put back to
 * what the child's memory holds, without the stacks it can no longer know.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kf_internal.h"

bool kf_state_shared;
uint8_t *kf_slot_backed;
struct kf_shadow *kf_shadow;

static char kf_state_path[320];
/* Kept open (a child's sparse file grows through it) and checked before each use. */
static int kf_state_fd = -1;
static ino_t kf_state_ino;
static dev_t kf_state_dev;
static _Atomic bool kf_state_full;  /* a slot could not be reserved: use no new ones */
static _Atomic bool kf_state_sealed;  /* the whole file is reserved: no more fallocate */
/* Bit i: report ring entry i is reserved in the file (all of them in private memory). */
static _Atomic uint64_t kf_ring_backed = ~0ull;
_Static_assert(KFENCE_MAX_REPORTS <= 64, "kf_ring_backed has a bit per ring entry");

KF_SIGSAFE static void kf_page_range(uint64_t off, uint64_t len, off_t *lo, off_t *n)
{
	uint64_t a = off & ~(uint64_t)(kf_page - 1);
	uint64_t b = (off + len + kf_page - 1) & ~(uint64_t)(kf_page - 1);
	*lo = (off_t)a;
	*n = (off_t)(b - a);
}

/* Reserve the whole pages under [off, off + len): a page partly reserved can still SIGBUS. */
KF_SIGSAFE static int kf_reserve(int fd, uint64_t off, uint64_t len)
{
	off_t lo, n;
	kf_page_range(off, len, &lo, &n);
	int rc;
	do
		rc = fallocate(fd, 0, lo, n);
	while (rc != 0 && errno == EINTR);
	return rc;
}

KF_SIGSAFE static int kf_pwrite_all(int fd, const void *data, size_t n, off_t off)
{
	const char *s = data;
	while (n > 0) {
		ssize_t w = pwrite(fd, s, n, off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

KF_SIGSAFE static uint64_t kf_slot_offset(const struct kfence_state *s, size_t slot)
{
	return s->slots_offset + slot * sizeof(struct kfence_slot);
}

/*
 * A slot holding a live object of this process, by its own record: the
 * mapping is not read (a hole of a full tmpfs is a SIGBUS even to read).
 */
KF_SIGSAFE static bool kf_slot_live(size_t i)
{
	return kf_slot_backed[i] && kf_shadow[i].state == KFENCE_SLOT_ALLOCATED;
}

KF_SIGSAFE void kf_slot_publish(size_t slot, uint32_t state)
{
	struct kfence_slot *m = &kf_slots[slot];
	struct kf_shadow *sh = &kf_shadow[slot];
	sh->generation++;
	sh->state = state;
	sh->addr = m->addr;
	sh->size = m->size;
	m->generation = sh->generation;
	atomic_store_explicit((_Atomic uint32_t *)&m->state, state, memory_order_release);
}

/* Slot i as this process's own record has it: state, address, size; no stacks. */
KF_SIGSAFE static void kf_slot_rebuild(struct kfence_slot *m, size_t i)
{
	const struct kf_shadow *sh = &kf_shadow[i];
	memset(m, 0, sizeof(*m));
	m->state = sh->state;
	m->addr = sh->addr;
	m->size = sh->size;
	m->generation = sh->generation;
}

/* The slot, read now, is what this process's own record says it is. */
KF_SIGSAFE static bool kf_slot_agrees(const struct kfence_slot *m, size_t i)
{
	const struct kf_shadow *sh = &kf_shadow[i];
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit((_Atomic uint32_t *)&m->state, memory_order_relaxed) ==
		       sh->state &&
	       atomic_load_explicit((_Atomic uint32_t *)&m->generation, memory_order_relaxed) ==
		       sh->generation &&
	       __atomic_load_n(&m->addr, __ATOMIC_RELAXED) == sh->addr &&
	       __atomic_load_n(&m->size, __ATOMIC_RELAXED) == sh->size;
}

/*
 * Copy slot i of a mapping its parent may be changing: kept if the slot
 * agrees with this process's own record after the copy (nothing published
 * or begun in between), else rebuilt from the record.
 */
KF_SIGSAFE static void kf_slot_copy(struct kfence_slot *copy, const struct kfence_slot *m, size_t i)
{
	memcpy(copy, (const void *)m, sizeof(*copy));
	if (!kf_slot_agrees(m, i) || copy->generation != kf_shadow[i].generation)
		kf_slot_rebuild(copy, i);
}

/*
 * Size the file and write what s holds: the header and the live objects.
 * Every other slot and the report ring (empty: a new process has no
 * reports of its own) are holes, reserved on first use, so that the file
 * costs what it holds (kfence-py run makes one for every process of a
 * build).  0 or an errno.
 */
KF_SIGSAFE static int kf_fill_file(int fd, const struct kfence_state *s)
{
	struct rlimit lim;
	/* Past RLIMIT_FSIZE, ftruncate and pwrite raise SIGXFSZ: never go there. */
	if (getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
	    lim.rlim_cur < s->total_size)
		return EFBIG;
	/* The module table as this process has it (a parent's may have grown since the fork). */
	uint32_t modules, paths_len;
	const char *paths;
	const struct kfence_module *table = kf_modules_table(&modules, &paths, &paths_len);
	if (modules > s->max_modules || paths_len > s->paths_size)
		modules = paths_len = 0;
	struct kfence_state header;
	memcpy(&header, s, sizeof(header));
	header.num_modules = modules;
	if (ftruncate(fd, (off_t)s->total_size) != 0 ||
	    kf_reserve(fd, 0, s->slots_offset) != 0 ||
	    kf_pwrite_all(fd, &header, sizeof(header), 0) != 0)
		return errno;
	if (modules &&
	    (kf_reserve(fd, s->modules_offset, modules * sizeof(*table)) != 0 ||
	     kf_reserve(fd, s->paths_offset, paths_len) != 0 ||
	     kf_pwrite_all(fd, table, modules * sizeof(*table), (off_t)s->modules_offset) != 0 ||
	     kf_pwrite_all(fd, paths, paths_len, (off_t)s->paths_offset) != 0))
		return errno;
	/*
	 * The live objects, a run of slots at a time, straight from the
	 * (parent's) mapping; a slot the parent changed meanwhile is written
	 * again from this process's record.  Freed objects are not copied: a
	 * child's use of one freed before the fork is reported without them.
	 */
	const struct kfence_slot *slots = (const struct kfence_slot *)((const char *)s + s->slots_offset);
	for (size_t i = 0, j; i < s->num_slots; i = j) {
		for (j = i + 1; kf_slot_live(i) && j < s->num_slots && kf_slot_live(j); j++)
			;
		if (!kf_slot_live(i))
			continue;
		uint64_t off = kf_slot_offset(s, i), len = (j - i) * sizeof(struct kfence_slot);
		if (kf_reserve(fd, off, len) != 0 || kf_pwrite_all(fd, &slots[i], len, (off_t)off) != 0)
			return errno;
		for (size_t k = i; k < j; k++) {
			struct kfence_slot copy;
			if (kf_slot_agrees(&slots[k], k))
				continue;
			kf_slot_rebuild(&copy, k);
			if (kf_pwrite_all(fd, &copy, sizeof(copy), (off_t)kf_slot_offset(s, k)) != 0)
				return errno;
		}
	}
	return 0;
}

/* After kf_fill_file: the new file backs the live slots, and only those. */
KF_SIGSAFE static void kf_mark_backed(const struct kfence_state *s)
{
	for (size_t i = 0; i < s->num_slots; i++)
		kf_slot_backed[i] = kf_slot_live(i);
	atomic_store(&kf_ring_backed, 0);
}

/*
 * Close kf_state_fd if it is still our file: the program may have closed
 * that number and opened something of its own on it since.
 */
KF_SIGSAFE static void kf_state_fd_drop(void)
{
	struct stat st;
	if (kf_state_fd >= 0 && fstat(kf_state_fd, &st) == 0 && st.st_ino == kf_state_ino &&
	    st.st_dev == kf_state_dev)
		close(kf_state_fd);
	kf_state_fd = -1;
}

KF_SIGSAFE int kf_state_publish(struct kfence_state *s, const char *dir)
{
	char tmp[sizeof(kf_state_path) + 8];
	struct kf_buf b = { kf_state_path, 0, sizeof(kf_state_path) - 1 };
	kf_buf_str(&b, dir);
	kf_buf_str(&b, "/");
	kf_buf_dec(&b, (uint64_t)getpid());
	kf_buf_str(&b, ".state");
	kf_state_path[b.len] = '\0';
	/* Filled under another name first: a reader never sees half a file. */
	struct kf_buf t = { tmp, 0, sizeof(tmp) - 1 };
	kf_buf_str(&t, kf_state_path);
	kf_buf_str(&t, ".new");
	tmp[t.len] = '\0';
	if (b.len >= b.cap || t.len >= t.cap)
		return ENAMETOOLONG;
	int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return errno;
	struct stat st;
	int err = fstat(fd, &st) != 0 ? errno : !S_ISREG(st.st_mode) ? EINVAL : kf_fill_file(fd, s);
	void *m = err ? MAP_FAILED : mmap(NULL, s->total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	err = err ? err : m == MAP_FAILED ? errno : 0;
	/* Faults touch one slot: without this, each reads ahead a hundred pages of holes. */
	if (!err)
		madvise(m, s->total_size, MADV_RANDOM);
	/* In one step over the old state, which stays whole if this fails. */
	if (!err && mremap(m, s->total_size, s->total_size, MREMAP_MAYMOVE | MREMAP_FIXED, s) ==
			    MAP_FAILED) {
		err = errno;
		munmap(m, s->total_size);
	}
	if (err || rename(tmp, kf_state_path) != 0) {
		err = err ? err : errno;
		close(fd);
		unlink(tmp);
		return err;
	}
	kf_mark_backed(s);
	kf_state_fd_drop();  /* the parent's, inherited */
	kf_state_fd = fd;
	kf_state_ino = st.st_ino;
	kf_state_dev = st.st_dev;
	kf_state_shared = true;
	atomic_store(&kf_state_full, false);
	atomic_store(&kf_state_sealed, false);
	return 0;
}

/* kf_state_fd if it is still our file; reopened by name if the program closed it. */
KF_SIGSAFE static int kf_state_file(void)
{
	struct stat st;
	if (kf_state_fd >= 0 && fstat(kf_state_fd, &st) == 0 && st.st_ino == kf_state_ino &&
	    st.st_dev == kf_state_dev)
		return kf_state_fd;
	kf_state_fd = -1;  /* not ours any more: never touched again */
	int fd = open(kf_state_path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0 && fstat(fd, &st) == 0 && st.st_ino == kf_state_ino && st.st_dev == kf_state_dev)
		return kf_state_fd = fd;
	if (fd >= 0)
		close(fd);
	errno = ESTALE;
	return -1;
}

/* The caller holds the freelist lock: one thread at a time uses kf_state_fd. */
bool kf_state_back_slot(size_t slot)
{
	if (!kf_state_shared || kf_slot_backed[slot])
		return true;
	if (atomic_load_explicit(&kf_state_full, memory_order_relaxed))
		return false;
	int fd = kf_state_file();
	bool ok = fd >= 0 &&
		  kf_reserve(fd, kf_slot_offset(kf_state, slot), sizeof(struct kfence_slot)) == 0;
	int err = errno;
	if (ok) {
		kf_slot_backed[slot] = 1;
		return true;
	}
	/*
	 * The pool shrinks to the slots already backed.  Switching to private
	 * memory now would race with other threads writing the mapping.
	 */
	if (!atomic_exchange(&kf_state_full, true))
		kf_warn("cannot grow the state file ", kf_state_path, ": ", kf_os_strerror(err),
			"; no new pool slots will be used", NULL);
	return false;
}

KF_SIGSAFE void kf_state_privatize(struct kfence_state *s)
{
	size_t size = s->total_size;
	struct kfence_state *copy = kf_os_map(size);
	if (copy) {
		/* Only what is backed: a hole of a full tmpfs would SIGBUS even when read. */
		memcpy(copy, s, s->header_size);
		for (size_t i = 0; i < s->num_slots; i++)
			if (kf_slot_backed[i])
				kf_slot_copy((struct kfence_slot *)((char *)copy + kf_slot_offset(s, i)),
					     (const struct kfence_slot *)((char *)s + kf_slot_offset(s, i)), i);
		if (mremap(copy, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, s) == MAP_FAILED) {
			kf_os_unmap(copy, size);
			copy = NULL;
		}
	}
	if (!copy) {
		/*
		 * No room for a second copy (RLIMIT_AS): anonymous memory in place,
		 * which costs no more, rebuilt from the header and this process's
		 * own record of each slot; the stacks are lost.  Never the parent's
		 * file written again.
		 */
		struct kfence_state header = *s;
		if (mmap(s, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
			 0) == MAP_FAILED)
			return;  /* cannot happen short of a kernel bug: replacing costs nothing */
		*s = header;
		for (size_t i = 0; i < s->num_slots; i++)
			if (kf_shadow[i].generation)
				kf_slot_rebuild((struct kfence_slot *)((char *)s + kf_slot_offset(s, i)), i);
	}
	memset(kf_slot_backed, 1, s->num_slots);
	atomic_store(&kf_ring_backed, ~0ull);
	kf_state_shared = false;
	kf_state_fd_drop();
	/* The module table was not copied: this process's own, whole. */
	s->num_modules = 0;
	kf_modules_publish(s);
}

/*
 * On the report path too (the module table), so without a lock: two threads
 * may reserve the same pages, which is harmless.
 */
KF_SIGSAFE bool kf_state_reserve(uint64_t off, uint64_t len)
{
	if (!kf_state_shared || len == 0 || atomic_load(&kf_state_sealed))
		return true;
	if (atomic_load_explicit(&kf_state_full, memory_order_relaxed))
		return false;
	int fd = kf_state_file();
	return fd >= 0 && kf_reserve(fd, off, len) == 0;
}

/*
 * Reserve report ring entry i before a report is recorded there; false if
 * impossible (the report is then counted and printed, not recorded).  On
 * the report path, so only system calls, and no lock: two threads may both
 * reserve the same pages, which is harmless.
 */
KF_SIGSAFE bool kf_state_report_backed(size_t i)
{
	return !kf_state_shared || (atomic_load(&kf_ring_backed) & (1ull << i));
}

KF_SIGSAFE bool kf_state_back_report(size_t i)
{
	uint64_t bit = 1ull << i;
	if (kf_state_report_backed(i))
		return true;
	if (atomic_load_explicit(&kf_state_full, memory_order_relaxed))
		return false;
	int fd = kf_state_file();
	if (fd < 0 || kf_reserve(fd, kf_state->reports_offset + i * sizeof(struct kfence_report),
				 sizeof(struct kfence_report)) != 0)
		return false;
	atomic_fetch_or(&kf_ring_backed, bit);
	return true;
}

/* Caller holds the freelist lock. */
void kf_state_seal(void)
{
	if (!kf_state_shared || atomic_load(&kf_state_full))
		return;
	size_t n = kf_state->num_slots;
	int fd = kf_state_file();
	if (fd >= 0 && kf_reserve(fd, kf_state->slots_offset,
				  kf_state->total_size - kf_state->slots_offset) == 0) {
		memset(kf_slot_backed, 1, n);
		atomic_store(&kf_ring_backed, ~0ull);
		atomic_store(&kf_state_sealed, true);
		return;
	}
	/* No new slots then: growing the file later may be forbidden. */
	if (!atomic_exchange(&kf_state_full, true))
		kf_warn("cannot reserve the state file ", kf_state_path, " before a sandbox: ",
			kf_os_strerror(errno), "; no new pool slots will be used", NULL);
}

struct kfence_state *kf_state_new(size_t n, uintptr_t pool, size_t pool_size)
{
	size_t reports = sizeof(struct kfence_state) + n * sizeof(struct kfence_slot);
	size_t modules = reports + KFENCE_MAX_REPORTS * sizeof(struct kfence_report);
	size_t paths = modules + KFENCE_MAX_MODULES * sizeof(struct kfence_module);
	size_t size = (paths + KFENCE_MODULE_PATHS + kf_page - 1) & ~(kf_page - 1);
	struct kfence_state *s = kf_os_map(size);
	if (!s)
		return NULL;
	memcpy(s->magic, "KFENCE\0\0", 8);
	s->version = KFENCE_STATE_VERSION;
	s->header_size = sizeof(struct kfence_state);
	s->slot_size = sizeof(struct kfence_slot);
	s->report_size = sizeof(struct kfence_report);
	s->num_slots = (uint32_t)n;
	s->max_reports = KFENCE_MAX_REPORTS;
	s->total_size = size;
	s->slots_offset = sizeof(struct kfence_state);
	s->reports_offset = reports;
	s->modules_offset = modules;
	s->paths_offset = paths;
	s->module_size = sizeof(struct kfence_module);
	s->max_modules = KFENCE_MAX_MODULES;
	s->paths_size = KFENCE_MODULE_PATHS;
	s->pid = (uint32_t)getpid();
	s->page_size = (uint32_t)kf_page;
	s->pool_start = pool;
	s->pool_size = pool_size;
	s->start_ns = kf_now_ns();
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	s->start_realtime_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
	/* The control block starts as the options say: the RUNTIME ones of options.inc. */
#define KFENCE_CONTROL_RUNTIME(name) s->control.name = (uint32_t)kf_opt.name;
#define KFENCE_CONTROL_START(name)
#define KF_OPTION(type, name, def, min, max, when, desc) KFENCE_CONTROL_##when(name)
#include "options.inc"
#undef KF_OPTION
#undef KFENCE_CONTROL_RUNTIME
#undef KFENCE_CONTROL_START
	return s;
}
