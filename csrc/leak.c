/*
 * leak_check=1: at exit, a conservative scan of the process's writable
 * memory for words that point into live guarded objects, as kmemleak and
 * LeakSanitizer do.  An object nothing points to is reported as a memory
 * leak; one still referenced is only counted.  Registers of other threads
 * are not scanned, and mappings over 1 GiB are skipped (reservations, not
 * data), as are shared mappings; objects allocated during the scan (by
 * threads still running) are not judged.  So a leak can be missed, but a
 * referenced object is rarely blamed.
 */
#define _GNU_SOURCE
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
		const struct kfence_slot *m = &kf_slots[slot];
		/* Interior pointers count; a pointer inside the object itself does not. */
		if (m->state == KFENCE_SLOT_ALLOCATED && w >= m->addr && w <= m->addr + m->size &&
		    (a < kf_slot_page((size_t)slot) || a >= kf_slot_page((size_t)slot) + kf_page))
			kf_marked[slot] = 1;
	}
}

/*
 * Copy the range out with process_vm_readv() rather than reading it: a page
 * that cannot be read (a truncated file mapping, a guard) then is an error
 * code, not a SIGBUS or SIGSEGV in the middle of exit.
 */
static void kf_scan_range(uintptr_t lo, uintptr_t hi)
{
	static uintptr_t buf[8192];
	pid_t self = getpid();
	for (uintptr_t a = (lo + 7) & ~(uintptr_t)7; a + 8 <= hi;) {
		size_t len = hi - a < sizeof(buf) ? (size_t)(hi - a) & ~(size_t)7 : sizeof(buf);
		struct iovec local = { buf, len }, remote = { (void *)a, len };
		ssize_t got = process_vm_readv(self, &local, 1, &remote, 1, 0);
		if (got <= 0) {
			a = (a + kf_page) & ~(uintptr_t)(kf_page - 1);  /* skip the bad page */
			continue;
		}
		kf_scan_words(buf, (size_t)got / 8, a);
		a += (uintptr_t)got & ~(uintptr_t)7;
	}
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

/* One line of /proc/self/maps: scan it if it is ordinary writable memory. */
static void kf_scan_line(const char *line, uintptr_t stack_floor, uintptr_t skip_lo, uintptr_t skip_hi)
{
	const char *s = line;
	uintptr_t lo = kf_parse_hex(&s);
	if (*s++ != '-')
		return;
	uintptr_t hi = kf_parse_hex(&s);
	/* private writable memory only: a shared mapping is someone else's data too */
	if (*s++ != ' ' || s[0] != 'r' || s[1] != 'w' || s[3] != 'p')
		return;
	const char *path = strchr(s, '/');
	if ((path && strncmp(path, "/dev/", 5) == 0) || hi - lo > KF_SCAN_MAX_MAPPING)
		return;
	if (lo < skip_hi && hi > skip_lo)
		return;  /* our own state */
	if (stack_floor >= lo && stack_floor < hi)
		lo = stack_floor;  /* our own frames hold the addresses we test */
	kf_scan_range(lo, hi);
}

static void kf_scan_maps(uintptr_t stack_floor)
{
	static char buf[8192];
	uintptr_t skip_lo = (uintptr_t)kf_state, skip_hi = skip_lo + kf_state->total_size;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size_t have = 0;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = '\0';
		char *start = buf, *nl;
		while ((nl = strchr(start, '\n'))) {
			*nl = '\0';
			kf_scan_line(start, stack_floor, skip_lo, skip_hi);
			start = nl + 1;
		}
		have = (size_t)(buf + have - start);
		memmove(buf, start, have);
		if (have == sizeof(buf) - 1)
			have = 0;  /* a line longer than the buffer: drop it */
	}
	close(fd);
}

__attribute__((noinline)) void kf_leak_check(void)
{
	size_t n = kf_state->num_slots;
	kf_marked = kf_os_map(n);
	if (!kf_marked)
		return;
	/* Threads still running may allocate while we scan: judge only older objects. */
	uint64_t started = kf_now_ns() - kf_state->start_ns;
	kf_scan_maps((uintptr_t)__builtin_frame_address(0));
	for (size_t i = 0; i < n; i++) {
		if (kf_slots[i].state != KFENCE_SLOT_ALLOCATED || kf_slots[i].alloc_ns >= started)
			continue;
		if (kf_marked[i]) {
			kf_count(KFENCE_COUNTER_LEAK_REFERENCED, 1);
			continue;
		}
		struct kf_report_in in = {
			.kind = KFENCE_BUG_LEAK, .access = KFENCE_ACCESS_NONE,
			.addr = kf_slots[i].addr, .slot = (long)i, .stack = &kf_slots[i].alloc_stack,
		};
		kf_report(&in);
	}
	kf_os_unmap(kf_marked, n);
	kf_marked = NULL;
}
