/*
 * leak_check=1: at exit, a conservative scan of the process's writable
 * memory for words that point into live guarded objects, as kmemleak and
 * LeakSanitizer do.  An object nothing points to is reported as a memory
 * leak; one still referenced is only counted.  Registers of other threads
 * are not scanned, and mappings over 1 GiB are skipped (reservations, not
 * data), so a leak can be missed but a referenced object is rarely blamed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "kf_internal.h"

#define KF_SCAN_MAX_MAPPING (1ull << 30)

static uint8_t *kf_marked;  /* one byte per slot: referenced */

static void kf_scan_range(uintptr_t lo, uintptr_t hi)
{
	for (uintptr_t a = (lo + 7) & ~(uintptr_t)7; a + 8 <= hi; a += 8) {
		uintptr_t w = *(const uintptr_t *)a;
		if (!kf_is_pool_address((void *)w))
			continue;
		size_t pg = (w - kf_pool.start) / kf_page;
		if (!(pg & 1))
			continue;
		size_t slot = (pg - 1) / 2;
		const struct kfence_slot *m = &kf_slots[slot];
		/* Interior pointers count; a pointer inside the object itself does not. */
		if (m->state == KFENCE_SLOT_ALLOCATED && w >= m->addr && w <= m->addr + m->size &&
		    (a < kf_slot_page(slot) || a >= kf_slot_page(slot) + kf_page))
			kf_marked[slot] = 1;
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
	if (*s++ != ' ' || s[0] != 'r' || s[1] != 'w')
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
	kf_scan_maps((uintptr_t)__builtin_frame_address(0));
	for (size_t i = 0; i < n; i++) {
		if (kf_slots[i].state != KFENCE_SLOT_ALLOCATED)
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
