/*
 * leak_check=1: at exit, a conservative scan of the process's writable
 * memory for words that point into live guarded objects, as kmemleak and
 * LeakSanitizer do.  An object nothing points to is reported as a memory
 * leak; one still referenced is only counted.  Registers of other threads
 * are not scanned, and mappings over 1 GiB are skipped (reservations, not
 * data), as are shared mappings; objects allocated during the scan (by
 * threads still running) are not judged.  So a leak can be missed, but a
 * referenced object is rarely blamed.  Where process_vm_readv() is refused
 * (seccomp), memory is read through /proc/self/mem; where that fails too,
 * or /proc/self/maps cannot be read, nothing is judged: one warning.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kf_internal.h"

#define KF_SCAN_MAX_MAPPING (1ull << 30)

static uint8_t *kf_marked;  /* one byte per slot: referenced */

/* Note which live objects the 8-byte words of buf (copied from address base) point into. */
static void kf_scan_words(const uintptr_t *buf, size_t n, uintptr_t base)
{
	for (size_t i = 0; i < n; i++) {
		uintptr_t w = buf[i], a = base + i * 8;
		if (!kf_is_pool_address((void *)w))
			continue;
		long slot = kf_addr_slot(w);
		if (slot < 0)
			continue;
		const struct kfence_slot *m = kf_slot_meta(slot);
		/* Interior pointers count; a pointer inside the object itself does not. */
		if (m && m->state == KFENCE_SLOT_ALLOCATED && w >= m->addr && w <= m->addr + m->size &&
		    (a < kf_slot_page((size_t)slot) || a >= kf_slot_page((size_t)slot) + kf_page))
			kf_marked[slot] = 1;
	}
}

static int kf_mem_fd = -1;  /* /proc/self/mem, once process_vm_readv() is refused */

/*
 * Copy len bytes at address a into buf without touching them ourselves: a
 * page that cannot be read (a truncated file mapping, a guard) then is an
 * error code, not a SIGBUS or SIGSEGV in the middle of exit.  Returns the
 * bytes copied, 0 for an unreadable page (skipped), -1 when reading memory
 * is refused altogether (seccomp: EPERM, ENOSYS), which leaves the scan
 * incomplete.
 */
static ssize_t kf_read_memory(void *buf, size_t len, uintptr_t a)
{
	ssize_t got;
	if (kf_mem_fd < 0) {
		struct iovec local = { buf, len }, remote = { (void *)a, len };
		got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
		if (got >= 0 || errno == EFAULT)
			return got < 0 ? 0 : got;
		/* Refused: /proc/self/mem reads the same memory through another door. */
		kf_mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
		if (kf_mem_fd < 0)
			return -1;
	}
	do
		got = pread(kf_mem_fd, buf, len, (off_t)a);
	while (got < 0 && errno == EINTR);
	if (got >= 0 || errno == EIO || errno == EFAULT)
		return got < 0 ? 0 : got;  /* EIO: a page the kernel cannot read for us */
	return -1;
}

/* Scan [lo, hi); false if memory could not be read at all. */
static bool kf_scan_range(uintptr_t lo, uintptr_t hi)
{
	static uintptr_t buf[8192];
	for (uintptr_t a = (lo + 7) & ~(uintptr_t)7; a + 8 <= hi;) {
		size_t len = hi - a < sizeof(buf) ? (size_t)(hi - a) & ~(size_t)7 : sizeof(buf);
		ssize_t got = kf_read_memory(buf, len, a);
		if (got < 0)
			return false;
		if (got == 0) {
			a = (a + kf_page) & ~(uintptr_t)(kf_page - 1);  /* skip the bad page */
			continue;
		}
		kf_scan_words(buf, (size_t)got / 8, a);
		a += (uintptr_t)got & ~(uintptr_t)7;
	}
	return true;
}

static uintptr_t kf_parse_hex(const char **s)
{
	uintptr_t v = 0;
	for (;; (*s)++) {
		char c = **s;
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return v;
		v = v * 16 + (uintptr_t)d;
	}
}

/* One line of /proc/self/maps: scan it if it is ordinary writable memory; false if refused. */
static bool kf_scan_line(const char *line, uintptr_t stack_floor)
{
	const char *s = line;
	uintptr_t lo = kf_parse_hex(&s);
	if (*s++ != '-')
		return true;
	uintptr_t hi = kf_parse_hex(&s);
	/* private writable memory only: a shared mapping is someone else's data too */
	if (*s++ != ' ' || s[0] != 'r' || s[1] != 'w' || s[3] != 'p')
		return true;
	const char *path = strchr(s, '/');
	if ((path && strncmp(path, "/dev/", 5) == 0) || hi - lo > KF_SCAN_MAX_MAPPING)
		return true;
	if (stack_floor >= lo && stack_floor < hi)
		lo = stack_floor;  /* our own frames hold the addresses we test */
	/*
	 * Not our own state and records, which point at every object; the
	 * kernel may have merged them into one line with the program's memory,
	 * so only they are left out.
	 */
	struct kf_range own[2] = {
		{ (uintptr_t)kf_state, (uintptr_t)kf_state + kf_state->total_size }, kf_private,
	};
	if (own[1].lo < own[0].lo) {
		struct kf_range r = own[0];
		own[0] = own[1];
		own[1] = r;
	}
	for (int i = 0; i < 2 && lo < hi; i++) {
		if (own[i].hi <= lo || own[i].lo >= hi)
			continue;
		if (own[i].lo > lo && !kf_scan_range(lo, own[i].lo))
			return false;
		lo = own[i].hi;
	}
	return lo >= hi || kf_scan_range(lo, hi);
}

/* Scan every mapping worth it; NULL when done, else why the scan is incomplete. */
static const char *kf_scan_maps(uintptr_t stack_floor)
{
	static char buf[8192];
	const char *why = NULL;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return "cannot open /proc/self/maps";
	size_t have = 0;
	while (!why) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			why = "cannot read /proc/self/maps";
		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = '\0';
		char *start = buf, *nl;
		while (!why && (nl = strchr(start, '\n'))) {
			*nl = '\0';
			if (!kf_scan_line(start, stack_floor))
				why = "cannot read this process's memory (process_vm_readv and "
				      "/proc/self/mem refused)";
			start = nl + 1;
		}
		have = (size_t)(buf + have - start);
		memmove(buf, start, have);
		if (have == sizeof(buf) - 1)
			why = "a line of /proc/self/maps is too long";
	}
	close(fd);
	if (kf_mem_fd >= 0)
		close(kf_mem_fd);
	kf_mem_fd = -1;
	return why;
}

__attribute__((noinline)) void kf_leak_check(void)
{
	size_t n = kf_state->num_slots;
	kf_marked = kf_os_map(n);
	if (!kf_marked)
		return;
	/* Threads still running may allocate while we scan: judge only older objects. */
	uint64_t started = kf_now_ns() - kf_state->start_ns;
	const char *why = kf_scan_maps((uintptr_t)__builtin_frame_address(0));
	/*
	 * A range not scanned could hold the only pointer to any object: after
	 * an incomplete scan, an unmarked object proves nothing.  (A single
	 * unreadable page is different: it cannot hold a pointer either.)
	 */
	if (why)
		kf_warn("leak_check skipped: ", why, NULL);
	for (size_t i = 0; i < n && !why; i++) {
		const struct kfence_slot *m = kf_slot_meta((long)i);
		if (!m || m->state != KFENCE_SLOT_ALLOCATED || m->alloc_ns >= started)
			continue;
		if (kf_marked[i]) {
			kf_count(KFENCE_COUNTER_LEAK_REFERENCED, 1);
			continue;
		}
		struct kf_report_in in = {
			.kind = KFENCE_BUG_LEAK, .access = KFENCE_ACCESS_NONE,
			.addr = m->addr, .slot = (long)i, .stack = &m->alloc_stack,
		};
		kf_report(&in);
	}
	kf_os_unmap(kf_marked, n);
	kf_marked = NULL;
}
