/*
 * The C++ allocation functions, interposed, so that a guarded object knows
 * its family (operator new, new[], or malloc) and a free by another family's
 * function is reported (alloc_dealloc_mismatch).
 *
 * Unsampled, operator new is what libstdc++'s is: glibc's malloc (or
 * memalign), and on failure the new-handler loop, then std::bad_alloc.  We
 * call glibc directly, not the program's malloc: a sample taken there would
 * be filed as malloc's and its delete reported as a mismatch.  operator
 * delete is free() with the family attached.  Our library is C: the handler
 * and the throw are libstdc++'s (or libc++'s) own functions, looked up when
 * first needed, on the failure path only.
 *
 * The hot path is malloc's: the countdown, a branch, glibc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>

#include "kf_internal.h"

extern void *__libc_malloc(size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

typedef void (*kf_handler_fn)(void);

/* std::get_new_handler(), from whichever C++ runtime the program has; NULL if none. */
static kf_handler_fn kf_new_handler(void)
{
	static kf_handler_fn (*get)(void);
	if (!get)
		get = (kf_handler_fn (*)(void))dlsym(RTLD_DEFAULT, "_ZSt15get_new_handlerv");
	if (!get)
		get = (kf_handler_fn (*)(void))dlsym(RTLD_DEFAULT, "_ZNSt3__115get_new_handlerEv");
	return get ? get() : NULL;
}

/* Throw std::bad_alloc through the program's C++ runtime; abort() without one. */
__attribute__((noreturn)) static void kf_throw_bad_alloc(void)
{
	void (*thrower)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "_ZSt17__throw_bad_allocv");
	if (!thrower)
		thrower = (void (*)(void))dlsym(RTLD_DEFAULT, "_ZNSt3__117__throw_bad_allocEv");
	if (thrower)
		thrower();
	abort();
}

/*
 * glibc's memory for an unsampled operator new of any variant: align 0 is
 * malloc's alignment.  On failure, the standard's loop: call the
 * new-handler and try again; without one, throw (or, nothrow, NULL).
 */
static void *kf_cxx_glibc(size_t size, size_t align, bool nothrow)
{
	if (!size)
		size = 1;  /* operator new(0) returns a unique pointer */
	for (;;) {
		void *p = align ? __libc_memalign(align, size) : __libc_malloc(size);
		if (KF_LIKELY(p != NULL))
			return p;
		kf_handler_fn handler = kf_new_handler();
		if (!handler) {
			if (nothrow)
				return NULL;
			kf_throw_bad_alloc();
		}
		/*
		 * A handler may throw: fine for the throwing variants.  The nothrow
		 * ones should then return NULL, which C cannot catch; a program
		 * that pairs a throwing handler with nothrow new gets the throw.
		 */
		handler();
	}
}

static inline void *kf_cxx_new(size_t size, size_t align, int cache, bool nothrow,
			       uintptr_t caller)
{
	if (KF_UNLIKELY(--kf_self.countdown <= 0)) {
		size_t a = align > kf_opt.align ? align : 0;
		void *p = kf_sample_alloc(&kf_self.countdown, size, a, cache, false, caller);
		if (p)
			return p;
	}
	return kf_cxx_glibc(size, align, nothrow);
}

static inline void kf_cxx_delete(void *p, int family, size_t size, uintptr_t caller)
{
	if (KF_UNLIKELY(kf_free_filtered(p))) {
		kf_free_slow(p, caller, family, size);
		return;
	}
	__libc_free(p);
}

/* Names mangled as the Itanium C++ ABI does on LP64 (size_t is "m"). */
#define KF_CALLER ((uintptr_t)__builtin_return_address(0))
#define KF_ALIGN_T size_t  /* std::align_val_t: an enum class of size_t */
struct kf_nothrow;           /* std::nothrow_t, passed by reference, never read */

/* Every operator we define, by its symbol. */
#define KF_CXX_OPERATORS(X) \
	X(_Znwm) X(_Znam) X(_ZnwmRKSt9nothrow_t) X(_ZnamRKSt9nothrow_t) \
	X(_ZnwmSt11align_val_t) X(_ZnamSt11align_val_t) \
	X(_ZnwmSt11align_val_tRKSt9nothrow_t) X(_ZnamSt11align_val_tRKSt9nothrow_t) \
	X(_ZdlPv) X(_ZdaPv) X(_ZdlPvm) X(_ZdaPvm) X(_ZdlPvSt11align_val_t) X(_ZdaPvSt11align_val_t) \
	X(_ZdlPvmSt11align_val_t) X(_ZdaPvmSt11align_val_t) X(_ZdlPvRKSt9nothrow_t) \
	X(_ZdaPvRKSt9nothrow_t) X(_ZdlPvSt11align_val_tRKSt9nothrow_t) \
	X(_ZdaPvSt11align_val_tRKSt9nothrow_t)

#define KF_CXX_INDEX(name) KF_CXX_##name,
enum { KF_CXX_OPERATORS(KF_CXX_INDEX) KF_CXX_COUNT };

/*
 * The program may replace any one operator: the C++ runtime's others then
 * call its replacement (its sized delete calls the program's delete, its
 * new[] and nothrow new the program's new).  Ours would go around it, and
 * give glibc memory the program's allocator made, or the reverse.  So once
 * the program replaces any of them, each of ours calls the runtime's own
 * (the next definition), as if we were not there.  Decided at the first
 * call, which may come from another library's constructor before we start.
 */
enum { KF_CXX_UNKNOWN, KF_CXX_OURS, KF_CXX_FORWARD };
static _Atomic int kf_cxx_mode;
static void *kf_cxx_next[KF_CXX_COUNT];


/*
 * This library's image, from its ELF header to the end of its .bss: symbols
 * the linker defines in every module, hidden so that these references stay
 * ours (an executable has an _end of its own).
 */
extern const char __ehdr_start[] __attribute__((visibility("hidden")));
extern const char _end[] __attribute__((visibility("hidden")));

static void kf_cxx_decide(void)
{
	static const char *const names[KF_CXX_COUNT] = {
#define KF_CXX_NAME(name) #name,
		KF_CXX_OPERATORS(KF_CXX_NAME)
	};
	KF_ENTER();  /* dlsym may allocate: from glibc */
	/*
	 * Whose is the process's definition: by module, as &_Znwm here would
	 * be the program's own when it replaced it (our references go through
	 * the GOT, which the executable's definition takes over).  By address
	 * range, not dladdr(), which scans a module's whole symbol table for
	 * the nearest name: 21 of them cost every process 9 us at start.
	 */
	bool replaced = false;
	for (int i = 0; i < KF_CXX_COUNT && !replaced; i++) {
		const char *f = dlsym(RTLD_DEFAULT, names[i]);
		replaced = f != NULL && (f < __ehdr_start || f >= _end);
	}
	/* Only then the runtime's own: in a C program each lookup fails, and a failed dlsym() allocates its message. */
	for (int i = 0; i < KF_CXX_COUNT && replaced; i++)
		kf_cxx_next[i] = dlsym(RTLD_NEXT, names[i]);
	/* Racing threads decide alike: the last store wins with the same answer. */
	atomic_store_explicit(&kf_cxx_mode, replaced ? KF_CXX_FORWARD : KF_CXX_OURS,
			      memory_order_release);
}

/* The runtime's own operator i when the program replaced one of them; NULL: ours serves. */
static inline void *kf_cxx_forward(int i)
{
	int mode = atomic_load_explicit(&kf_cxx_mode, memory_order_acquire);
	if (KF_LIKELY(mode == KF_CXX_OURS))
		return NULL;
	if (mode == KF_CXX_UNKNOWN) {
		kf_cxx_decide();
		mode = atomic_load_explicit(&kf_cxx_mode, memory_order_acquire);
	}
	return mode == KF_CXX_FORWARD ? kf_cxx_next[i] : NULL;
}

typedef void *(*kf_new_fn)(size_t);
typedef void *(*kf_new_nt_fn)(size_t, const struct kf_nothrow *);
typedef void *(*kf_new_al_fn)(size_t, KF_ALIGN_T);
typedef void *(*kf_new_al_nt_fn)(size_t, KF_ALIGN_T, const struct kf_nothrow *);
typedef void (*kf_del_fn)(void *);
typedef void (*kf_del_sz_fn)(void *, size_t);
typedef void (*kf_del_al_fn)(void *, KF_ALIGN_T);
typedef void (*kf_del_sz_al_fn)(void *, size_t, KF_ALIGN_T);
typedef void (*kf_del_nt_fn)(void *, const struct kf_nothrow *);
typedef void (*kf_del_al_nt_fn)(void *, KF_ALIGN_T, const struct kf_nothrow *);

/* operator new and new[]: plain, nothrow, aligned, aligned nothrow. */
void *_Znwm(size_t n)
{
	kf_new_fn fwd = (kf_new_fn)kf_cxx_forward(KF_CXX__Znwm);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n);
	return kf_cxx_new(n, 0, KFENCE_CACHE_NEW, false, KF_CALLER);
}
void *_Znam(size_t n)
{
	kf_new_fn fwd = (kf_new_fn)kf_cxx_forward(KF_CXX__Znam);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n);
	return kf_cxx_new(n, 0, KFENCE_CACHE_NEW_ARRAY, false, KF_CALLER);
}
void *_ZnwmRKSt9nothrow_t(size_t n, const struct kf_nothrow *t)
{
	kf_new_nt_fn fwd = (kf_new_nt_fn)kf_cxx_forward(KF_CXX__ZnwmRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, t);
	return kf_cxx_new(n, 0, KFENCE_CACHE_NEW, true, KF_CALLER);
}
void *_ZnamRKSt9nothrow_t(size_t n, const struct kf_nothrow *t)
{
	kf_new_nt_fn fwd = (kf_new_nt_fn)kf_cxx_forward(KF_CXX__ZnamRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, t);
	return kf_cxx_new(n, 0, KFENCE_CACHE_NEW_ARRAY, true, KF_CALLER);
}
void *_ZnwmSt11align_val_t(size_t n, KF_ALIGN_T a)
{
	kf_new_al_fn fwd = (kf_new_al_fn)kf_cxx_forward(KF_CXX__ZnwmSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, a);
	return kf_cxx_new(n, a, KFENCE_CACHE_NEW, false, KF_CALLER);
}
void *_ZnamSt11align_val_t(size_t n, KF_ALIGN_T a)
{
	kf_new_al_fn fwd = (kf_new_al_fn)kf_cxx_forward(KF_CXX__ZnamSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, a);
	return kf_cxx_new(n, a, KFENCE_CACHE_NEW_ARRAY, false, KF_CALLER);
}
void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, KF_ALIGN_T a, const struct kf_nothrow *t)
{
	kf_new_al_nt_fn fwd = (kf_new_al_nt_fn)kf_cxx_forward(KF_CXX__ZnwmSt11align_val_tRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, a, t);
	return kf_cxx_new(n, a, KFENCE_CACHE_NEW, true, KF_CALLER);
}
void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, KF_ALIGN_T a, const struct kf_nothrow *t)
{
	kf_new_al_nt_fn fwd = (kf_new_al_nt_fn)kf_cxx_forward(KF_CXX__ZnamSt11align_val_tRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(n, a, t);
	return kf_cxx_new(n, a, KFENCE_CACHE_NEW_ARRAY, true, KF_CALLER);
}

/* operator delete and delete[]: plain, sized, aligned, sized aligned, nothrow. */
void _ZdlPv(void *p)
{
	kf_del_fn fwd = (kf_del_fn)kf_cxx_forward(KF_CXX__ZdlPv);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, 0, KF_CALLER);
}
void _ZdaPv(void *p)
{
	kf_del_fn fwd = (kf_del_fn)kf_cxx_forward(KF_CXX__ZdaPv);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, 0, KF_CALLER);
}
void _ZdlPvm(void *p, size_t n)
{
	kf_del_sz_fn fwd = (kf_del_sz_fn)kf_cxx_forward(KF_CXX__ZdlPvm);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, n);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, n, KF_CALLER);
}
void _ZdaPvm(void *p, size_t n)
{
	kf_del_sz_fn fwd = (kf_del_sz_fn)kf_cxx_forward(KF_CXX__ZdaPvm);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, n);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, n, KF_CALLER);
}
void _ZdlPvSt11align_val_t(void *p, KF_ALIGN_T a)
{
	kf_del_al_fn fwd = (kf_del_al_fn)kf_cxx_forward(KF_CXX__ZdlPvSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, a);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, 0, KF_CALLER);
}
void _ZdaPvSt11align_val_t(void *p, KF_ALIGN_T a)
{
	kf_del_al_fn fwd = (kf_del_al_fn)kf_cxx_forward(KF_CXX__ZdaPvSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, a);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, 0, KF_CALLER);
}
void _ZdlPvmSt11align_val_t(void *p, size_t n, KF_ALIGN_T a)
{
	kf_del_sz_al_fn fwd = (kf_del_sz_al_fn)kf_cxx_forward(KF_CXX__ZdlPvmSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, n, a);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, n, KF_CALLER);
}
void _ZdaPvmSt11align_val_t(void *p, size_t n, KF_ALIGN_T a)
{
	kf_del_sz_al_fn fwd = (kf_del_sz_al_fn)kf_cxx_forward(KF_CXX__ZdaPvmSt11align_val_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, n, a);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, n, KF_CALLER);
}
void _ZdlPvRKSt9nothrow_t(void *p, const struct kf_nothrow *t)
{
	kf_del_nt_fn fwd = (kf_del_nt_fn)kf_cxx_forward(KF_CXX__ZdlPvRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, t);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, 0, KF_CALLER);
}
void _ZdaPvRKSt9nothrow_t(void *p, const struct kf_nothrow *t)
{
	kf_del_nt_fn fwd = (kf_del_nt_fn)kf_cxx_forward(KF_CXX__ZdaPvRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, t);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, 0, KF_CALLER);
}
void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, KF_ALIGN_T a, const struct kf_nothrow *t)
{
	kf_del_al_nt_fn fwd = (kf_del_al_nt_fn)kf_cxx_forward(KF_CXX__ZdlPvSt11align_val_tRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, a, t);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW, 0, KF_CALLER);
}
void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, KF_ALIGN_T a, const struct kf_nothrow *t)
{
	kf_del_al_nt_fn fwd = (kf_del_al_nt_fn)kf_cxx_forward(KF_CXX__ZdaPvSt11align_val_tRKSt9nothrow_t);
	if (KF_UNLIKELY(fwd != NULL))
		return fwd(p, a, t);
	kf_cxx_delete(p, KFENCE_FAMILY_NEW_ARRAY, 0, KF_CALLER);
}

bool kf_family_mismatch(int alloc, int dealloc)
{
	if (!kf_opt.alloc_dealloc_mismatch || alloc == dealloc)
		return false;
	/*
	 * Judged only when the process's new/delete pair is ours.  Two families
	 * differ only when an operator of ours was called, which decided this
	 * (kf_cxx_forward): not at start-up, where its 21 dlsym() calls were a
	 * tenth of every process's start.  Undecided: not judged.
	 */
	return atomic_load_explicit(&kf_cxx_mode, memory_order_acquire) == KF_CXX_OURS;
}
