/*
 * check_free=1: a free() or delete of memory that is plainly not from the
 * heap, reported instead of handed to glibc, which may abort, crash later,
 * or worse, put a stack or .bss address on its tcache and return it from a
 * later malloc.  Plainly not heap means: misaligned (every allocation
 * function returns 16-byte aligned memory), in kfence's own metadata, on
 * this thread's stack between the caller's frame and the stack's top, or
 * inside a loaded module's image (its code, read-only data, .data or .bss).
 *
 * Every free pays for this when the option is on (the free filter sends
 * all of them here), so the common case is a few compares: an address in
 * glibc's main heap (between the break at start and now) is let through at
 * once; for the others (thread arenas, mmapped chunks), the thread's stack
 * bounds are kept in its TLS and the module images in a sorted table
 * searched without a lock.  The table is only a filter: a hit is confirmed
 * with a fresh walk of the loaded modules before anything is reported, so a
 * table made stale by dlclose() never accuses; a module loaded since the
 * last refresh is missed until the next one (every 64Ki frees of a thread).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_internal.h"

#define KF_IMAGES_MAX 1024
#define KF_IMAGES_REFRESH 65536  /* frees of a thread between refreshes */

struct kf_image {
	uintptr_t lo, hi;
	uintptr_t data_end;  /* W segments: .data is [lo, data_end), .bss the rest */
	int detail;          /* TEXT, RODATA or DATA (DATA/BSS split by data_end) */
};

static struct kf_image kf_images[KF_IMAGES_MAX];
static _Atomic size_t kf_image_count;
static pthread_mutex_t kf_images_lock = PTHREAD_MUTEX_INITIALIZER;

struct kf_image_walk {
	struct kf_image *out;
	size_t n, cap;
	uintptr_t find;        /* find mode: the address looked for */
	struct kf_image found;
	uintptr_t code;        /* find mode: where the found module's code is (names it) */
};

static int kf_image_segments(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	struct kf_image_walk *w = data;
	uintptr_t code = 0;
	bool found = false;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD || !ph->p_memsz)
			continue;
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
		struct kf_image im = {
			.lo = lo, .hi = lo + ph->p_memsz, .data_end = lo + ph->p_filesz,
			.detail = (ph->p_flags & PF_X) ? KFENCE_DETAIL_TEXT :
				  (ph->p_flags & PF_W) ? KFENCE_DETAIL_DATA : KFENCE_DETAIL_RODATA,
		};
		if (!code && im.detail == KFENCE_DETAIL_TEXT)
			code = im.lo;
		if (w->find && w->find >= im.lo && w->find < im.hi) {
			w->found = im;
			found = true;
		} else if (!w->find && w->n < w->cap) {
			w->out[w->n++] = im;
		}
	}
	w->code = code;
	return found;
}

void kf_images_refresh(void)
{
	static struct kf_image fresh[KF_IMAGES_MAX];
	if (pthread_mutex_trylock(&kf_images_lock) != 0)
		return;  /* another thread is at it */
	KF_ENTER();
	struct kf_image_walk w = { fresh, 0, KF_IMAGES_MAX, 0, { 0 }, 0 };
	dl_iterate_phdr(kf_image_segments, &w);
	/* Insertion sort by start: a few hundred segments at most. */
	for (size_t i = 1; i < w.n; i++) {
		struct kf_image x = fresh[i];
		size_t j = i;
		for (; j > 0 && fresh[j - 1].lo > x.lo; j--)
			fresh[j] = fresh[j - 1];
		fresh[j] = x;
	}
	/*
	 * Readers search without the lock: shrink the count first, then write,
	 * then publish.  A reader racing a refresh may see a mix; the mix can
	 * only cost a confirmation walk or a missed report, never a false one.
	 */
	atomic_store_explicit(&kf_image_count, 0, memory_order_release);
	for (size_t i = 0; i < w.n; i++)
		kf_images[i] = fresh[i];
	atomic_store_explicit(&kf_image_count, w.n, memory_order_release);
	pthread_mutex_unlock(&kf_images_lock);
}

/* The table's guess: in some module's image? */
static bool kf_images_may_hold(uintptr_t a)
{
	size_t lo = 0, hi = atomic_load_explicit(&kf_image_count, memory_order_acquire);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a < kf_images[mid].lo)
			hi = mid;
		else if (a >= kf_images[mid].hi)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/*
 * What part of a module image holds a (a fresh walk); NONE if none.  *code
 * is an address in the module's code, which the report turns into its name
 * (a .bss has no file in /proc/self/maps to name it by).
 */
static int kf_image_detail(uintptr_t a, uint64_t *code)
{
	struct kf_image_walk w = { NULL, 0, 0, a, { 0 }, 0 };
	KF_ENTER();
	if (!dl_iterate_phdr(kf_image_segments, &w))
		return KFENCE_DETAIL_NONE;
	*code = w.code;
	if (w.found.detail == KFENCE_DETAIL_DATA && a >= w.found.data_end)
		return KFENCE_DETAIL_BSS;
	return w.found.detail;
}

/*
 * The code segment of the module that holds pthread_getattr_np (libc, or an
 * old glibc's libpthread): a free called from there may be made while it
 * holds the thread's lock, which asking it again would wait on for good.
 */
static uintptr_t kf_attr_code_lo, kf_attr_code_hi;

/*
 * This thread's stack, from its attributes, once; false if unknown.  Not
 * asked for a free that pthread_getattr_np's module makes (see above): its
 * own memory, never a stack.
 */
static bool kf_stack_bounds(uintptr_t caller, uintptr_t *lo, uintptr_t *hi)
{
	if (!kf_self.stack_hi) {
		if (caller >= kf_attr_code_lo && caller < kf_attr_code_hi)
			return false;
		pthread_attr_t attr;
		void *addr;
		size_t size;
		KF_ENTER();  /* the main thread's attributes read /proc/self/maps with malloc */
		if (pthread_getattr_np(pthread_self(), &attr) != 0)
			return false;
		int rc = pthread_attr_getstack(&attr, &addr, &size);
		pthread_attr_destroy(&attr);
		if (rc != 0 || !size)
			return false;
		kf_self.stack_lo = (uintptr_t)addr;
		kf_self.stack_hi = (uintptr_t)addr + size;
	}
	*lo = kf_self.stack_lo;
	*hi = kf_self.stack_hi;
	return true;
}

/* The program break at start: [kf_heap_lo, sbrk(0)) is glibc's main heap. */
static uintptr_t kf_heap_lo;

/* Why a (passed to free) is plainly not heap memory, with the detail's value; NONE if it may be. */
static int kf_nonheap_detail(uintptr_t a, uintptr_t caller, uint64_t *value)
{
	const uintptr_t align = alignof(max_align_t);
	if (KF_UNLIKELY(a & (align - 1))) {
		/* Never an allocation's start; a literal or a function says more, though. */
		int detail = kf_images_may_hold(a) ? kf_image_detail(a, value) : KFENCE_DETAIL_NONE;
		if (!detail) {
			*value = align;
			detail = KFENCE_DETAIL_MISALIGNED;
		}
		return detail;
	}
	/* Most frees: glibc's main heap (sbrk(0) reads a variable, no system call). */
	if (a >= kf_heap_lo && a < (uintptr_t)sbrk(0))
		return KFENCE_DETAIL_NONE;
	if ((a >= (uintptr_t)kf_state && a - (uintptr_t)kf_state < kf_state->total_size) ||
	    (a >= kf_private.lo && a < kf_private.hi))
		return KFENCE_DETAIL_METADATA;
	/*
	 * Our own frame is below every frame of the caller, so [here, top) is
	 * this thread's live stack: when here is inside the stack the thread
	 * was made with.  On another stack (a coroutine's, sigaltstack) we do
	 * not know where that one ends, and say nothing.
	 */
	uintptr_t here = (uintptr_t)__builtin_frame_address(0), lo, hi;
	if (a >= here && kf_stack_bounds(caller, &lo, &hi) && here >= lo && here < hi && a < hi) {
		*value = kf_tid();
		return KFENCE_DETAIL_STACK;
	}
	if (KF_UNLIKELY(++kf_self.frees % KF_IMAGES_REFRESH == 0))
		kf_images_refresh();
	return kf_images_may_hold(a) ? kf_image_detail(a, value) : KFENCE_DETAIL_NONE;
}

/* The program break the process started with: field 47 (start_brk) of /proc/self/stat. */
static uintptr_t kf_start_brk(void)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	char *s = strrchr(buf, ')');  /* the command's name may hold anything */
	for (int field = 2; s && field < 47; field++)
		s = strchr(s + 1, ' ');
	return s ? (uintptr_t)strtoull(s + 1, NULL, 10) : 0;
}

void kf_nonheap_init(void)
{
	/* Unknown (an old kernel, no /proc): the break now, which heap growth starts from. */
	kf_heap_lo = kf_start_brk();
	if (!kf_heap_lo)
		kf_heap_lo = (uintptr_t)sbrk(0);
	struct kf_image_walk w = { NULL, 0, 0, (uintptr_t)&pthread_getattr_np, { 0 }, 0 };
	if (dl_iterate_phdr(kf_image_segments, &w)) {
		kf_attr_code_lo = w.found.lo;
		kf_attr_code_hi = w.found.hi;
	}
	kf_images_refresh();
}

bool kf_nonheap_free(void *p, uintptr_t caller)
{
	/*
	 * A free by code the library called (pthread_getattr_np, the loader):
	 * glibc's memory, and looking at it would call that code again.
	 */
	if (kf_self.in_lib || !kf_ready() || !kf_check_owner())
		return false;
	uint64_t value = 0;
	int detail = kf_nonheap_detail((uintptr_t)p, caller, &value);
	if (detail == KFENCE_DETAIL_NONE)
		return false;
	KF_ENTER();
	int saved = errno;
	struct kfence_stack st = { .depth = 1, .pc = { caller } };
	if (kf_unwind_safe(caller))
		kf_capture_stack(&st);
	struct kf_report_in in = {
		.kind = KFENCE_BUG_INVALID_FREE, .access = KFENCE_ACCESS_NONE,
		.addr = (uintptr_t)p, .slot = -1, .stack = &st, .detail = detail, .value = value,
	};
	kf_report(&in);
	errno = saved;
	return true;
}
