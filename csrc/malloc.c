/*
 * The malloc family, interposed.  All overrides live in this file.
 *
 * The hot path (not sampled) is a decrement of a thread-local countdown and
 * a branch, then a tail call into glibc's own entry point; free() adds one
 * range check.  No lock, no atomic read-modify-write, no system call and no
 * clock read per call: all of that waits behind the countdown, in gate.c.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "kf_internal.h"

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

/* Entry points glibc has no __libc_ name for, looked up in libc itself once. */
static size_t (*kf_libc_usable_size)(void *);
static void *(*kf_libc_aligned_alloc)(size_t, size_t);

void kf_resolve_libc(void)
{
	kf_libc_usable_size = (size_t (*)(void *))kf_libc_sym("malloc_usable_size");
	kf_libc_aligned_alloc = (void *(*)(size_t, size_t))kf_libc_sym("aligned_alloc");
}

static inline bool kf_tick(void)
{
	return KF_UNLIKELY(--kf_self.countdown <= 0);
}

/* Sampling decision behind an expired countdown; NULL means glibc serves it. */
static __attribute__((noinline)) void *kf_slow(size_t size, size_t align, int cache, bool zero,
						uintptr_t caller)
{
	return kf_sample_alloc(&kf_self.countdown, size, align, cache, zero, caller);
}

/* The return address of the entry point: who allocates (the unwinder must not be sampled). */
#define KF_CALLER ((uintptr_t)__builtin_return_address(0))

void *malloc(size_t size)
{
	if (kf_tick()) {
		void *p = kf_slow(size, 0, KFENCE_CACHE_MALLOC, false, KF_CALLER);
		if (p)
			return p;
	}
	return __libc_malloc(size);
}

struct kf_order {
	uintptr_t ours, libcs;  /* an address in each module */
	int ours_at, libc_at;   /* their places in the load order, -1 unknown */
	int at;
};

static int kf_find_order(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	struct kf_order *o = data;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		if (o->ours >= lo && o->ours < lo + ph->p_memsz)
			o->ours_at = o->at;
		if (o->libcs >= lo && o->libcs < lo + ph->p_memsz)
			o->libc_at = o->at;
	}
	o->at++;
	return 0;
}

bool kf_detect_interposing(void)
{
	/*
	 * Symbols resolve in load order, so our malloc is the process's exactly
	 * when we were loaded before libc (LD_PRELOAD, or linked in by the
	 * program); a dlopen()ed copy comes after it.  Comparing function
	 * addresses instead fails in non-PIE programs, where &malloc is the
	 * executable's own PLT entry.
	 */
	struct kf_order o = { (uintptr_t)&kf_detect_interposing, (uintptr_t)&__libc_malloc,
			      -1, -1, 0 };
	dl_iterate_phdr(kf_find_order, &o);
	return o.ours_at >= 0 && o.libc_at >= 0 && o.ours_at < o.libc_at;
}

struct kf_pool_range kf_free_filter;

void kf_free_filter_init(void)
{
	/* With check_free, every free takes the slow path; else the pool's frees do. */
	kf_free_filter = kf_opt.check_free && kf_interposing
				 ? (struct kf_pool_range){ 0, UINTPTR_MAX }
				 : kf_pool;
}

void kf_free_slow(void *p, uintptr_t caller, int family, size_t size)
{
	if (kf_is_pool_address(p))
		kf_pool_free(p, caller, family, size);
	else if (p && !kf_nonheap_free(p, caller)) {
		__libc_free(p);
	}
}

void free(void *p)
{
	if (KF_UNLIKELY(kf_free_filtered(p))) {
		kf_free_slow(p, KF_CALLER, KFENCE_FAMILY_MALLOC, 0);
		return;
	}
	__libc_free(p);
}

void cfree(void *p) __attribute__((alias("free"), copy(free)));

void *calloc(size_t nmemb, size_t size)
{
	size_t total;
	if (kf_tick() && !__builtin_mul_overflow(nmemb, size, &total)) {
		void *p = kf_slow(total, 0, KFENCE_CACHE_CALLOC, true, KF_CALLER);
		if (p)
			return p;
	}
	return __libc_calloc(nmemb, size);
}

static void *kf_realloc_pool(void *p, size_t size, uintptr_t caller)
{
	size_t old;
	if (!kf_pool_live(p, &old)) {
		kf_pool_free(p, caller, KFENCE_FAMILY_MALLOC, 0);  /* reports the invalid free */
		errno = EINVAL;
		return NULL;
	}
	if (size == 0) {  /* glibc: realloc(p, 0) frees p and returns NULL */
		kf_pool_free(p, caller, KFENCE_FAMILY_MALLOC, 0);
		return NULL;
	}
	void *q = malloc(size);
	if (!q)
		return NULL;  /* p stays valid, as glibc leaves it */
	memcpy(q, p, old < size ? old : size);
	kf_pool_free(p, caller, KFENCE_FAMILY_MALLOC, 0);
	return q;
}

void *realloc(void *p, size_t size)
{
	if (KF_UNLIKELY(kf_is_pool_address(p)))
		return kf_realloc_pool(p, size, KF_CALLER);
	if (!p)
		return malloc(size);
	/* Sampling a glibc chunk needs its size to copy: skip if we could not look it up. */
	if (kf_tick() && size && kf_libc_usable_size) {
		void *q = kf_slow(size, 0, KFENCE_CACHE_REALLOC, false, KF_CALLER);
		if (q) {
			size_t old = kf_libc_usable_size(p);
			memcpy(q, p, old < size ? old : size);
			__libc_free(p);
			return q;
		}
	}
	return __libc_realloc(p, size);
}

void *reallocarray(void *p, size_t nmemb, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(nmemb, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total);
}

/* memalign's reading of an alignment: rounded up to a power of two; 0 if invalid. */
static size_t kf_norm_align(size_t align)
{
	if (align > SIZE_MAX / 2 + 1)
		return 0;
	size_t a = 1;
	while (a < align)
		a <<= 1;
	return a;
}

static void *kf_aligned_sample(size_t align, size_t size, uintptr_t caller)
{
	size_t a = kf_norm_align(align);
	if (!a)
		return NULL;  /* glibc's error to give */
	if (a < kf_opt.align)
		a = kf_opt.align;  /* the align option is a minimum here too */
	return kf_slow(size, a, KFENCE_CACHE_MEMALIGN, false, caller);
}

void *memalign(size_t align, size_t size)
{
	if (kf_tick()) {
		void *p = kf_aligned_sample(align, size, KF_CALLER);
		if (p)
			return p;
	}
	return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
	/* Newer glibc refuses alignments that are not powers of two: ask it. */
	if (kf_tick() && align && !(align & (align - 1))) {
		void *p = kf_aligned_sample(align, size, KF_CALLER);
		if (p)
			return p;
	}
	if (kf_libc_aligned_alloc)
		return kf_libc_aligned_alloc(align, size);
	return __libc_memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
	if (align == 0 || align % sizeof(void *) || (align / sizeof(void *)) & (align / sizeof(void *) - 1))
		return EINVAL;
	void *p = kf_tick() ? kf_aligned_sample(align, size, KF_CALLER) : NULL;
	if (!p)
		p = __libc_memalign(align, size);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

void *valloc(size_t size)
{
	if (kf_tick()) {
		void *p = kf_aligned_sample(kf_page, size, KF_CALLER);
		if (p)
			return p;
	}
	return __libc_valloc(size);
}

void *pvalloc(size_t size)
{
	/* pvalloc rounds the size up to whole pages; one page fits a slot. */
	if (kf_tick() && size <= kf_page && kf_page) {
		void *p = kf_slow(kf_page, kf_page, KFENCE_CACHE_MEMALIGN, false, KF_CALLER);
		if (p)
			return p;
	}
	return __libc_pvalloc(size);
}

size_t malloc_usable_size(void *p)
{
	if (KF_UNLIKELY(kf_is_pool_address(p))) {
		size_t size;
		return kf_pool_live(p, &size) ? size : 0;
	}
	if (!p)
		return 0;
	if (!kf_libc_usable_size) {
		KF_ENTER();
		kf_resolve_libc();
	}
	return kf_libc_usable_size ? kf_libc_usable_size(p) : 0;
}
