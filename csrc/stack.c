/*
 * Stacks: where our own code is, where the unwinder is, and capturing the
 * caller's stack with our frames left out.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <gnu/lib-names.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/auxv.h>
#include <unwind.h>

#include "kf_internal.h"

/* Text range of this library. */
static uintptr_t kf_self_lo, kf_self_hi;

/* Other modules whose frames are ours too (the Python hooks): kfence_register_internal(). */
static struct {
	uintptr_t lo, hi;
} kf_internal[4];
static _Atomic int kf_internal_count;

KF_SIGSAFE bool kf_in_self(uintptr_t pc)
{
	if (pc >= kf_self_lo && pc < kf_self_hi)
		return true;
	for (int i = 0; i < atomic_load_explicit(&kf_internal_count, memory_order_acquire); i++)
		if (pc >= kf_internal[i].lo && pc < kf_internal[i].hi)
			return true;
	return false;
}

/*
 * The unwinder: libgcc's _Unwind_Backtrace, from libgcc_s.so.1, as glibc's
 * backtrace() uses it.  It is loaded at the first stack the process takes,
 * not at start-up: loading it (a dlopen, and libgcc's constructor, which runs
 * cpuid: a trap to the hypervisor on a virtual machine) was 170 us of every
 * process's start-up here, sampled or not (bench/startup_bench.py).
 *
 * Its own code calls malloc and free while it holds its lock on registered
 * frames (__register_frame_info, used by JITs); unwinding from there would
 * wait on that lock forever.  So what it allocates is never sampled, and
 * what it frees gets no stack (kf_unwind_safe).
 *
 * Why libgcc's and not a faster one: libunwind (nongnu, 1.6 in Debian 12)
 * unwinds a stack it has cached 25x faster here (16-20 ns a frame against
 * libgcc's 400-500 ns on this loaded VM, about 1,800 instructions: libgcc
 * reads the frame's CFI anew each time), but validates addresses by writing
 * them to a pipe it keeps open in the host: a program that closes and reuses
 * those descriptor numbers would have bytes read from and written into its
 * own files.  The two stacks of a sampled cycle are about 45% of its time.
 */
enum kf_unwinder_state {
	KF_UNWINDER_NONE,     /* not loaded yet */
	KF_UNWINDER_LOADING,  /* a thread is loading it */
	KF_UNWINDER_READY,    /* loaded (the functions may still be missing: no stacks then) */
};
static _Atomic int kf_unwinder_state;
_Unwind_Reason_Code (*kf_gcc_backtrace)(_Unwind_Trace_Fn, void *);
static _Unwind_Ptr (*kf_gcc_get_ip)(struct _Unwind_Context *);

struct kf_range_pair {
	uintptr_t lo, hi;
};
/* libgcc_s's text (known once it is loaded), and the dynamic loader's. */
static struct kf_range_pair kf_unwinder, kf_loader;

KF_SIGSAFE bool kf_unwind_safe(uintptr_t caller)
{
	return !(caller >= kf_unwinder.lo && caller < kf_unwinder.hi);
}

/* The executable range of a module, from its program headers. */
static struct kf_range_pair kf_text_of(const struct dl_phdr_info *info)
{
	struct kf_range_pair r = { UINTPTR_MAX, 0 };
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t s = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		r.lo = s < r.lo ? s : r.lo;
		r.hi = s + ph->p_memsz > r.hi ? s + ph->p_memsz : r.hi;
	}
	return r.lo < r.hi ? r : (struct kf_range_pair){ 0, 0 };
}

/* The text of libgcc_s (if loaded), of this library and of the dynamic loader. */
static int kf_find_ranges(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	const char *base = strrchr(info->dlpi_name, '/');
	struct kf_range_pair text = kf_text_of(info);
	if (strncmp(base ? base + 1 : info->dlpi_name, "libgcc_s.so", 11) == 0)
		kf_unwinder = text;
	if ((uintptr_t)&kf_find_ranges >= text.lo && (uintptr_t)&kf_find_ranges < text.hi) {
		kf_self_lo = text.lo;
		kf_self_hi = text.hi;
	}
	if (info->dlpi_addr && info->dlpi_addr == getauxval(AT_BASE))
		kf_loader = text;
	return 0;
}

/*
 * The Python interpreter's text (libpython, or the python executable when it
 * is linked in), found at the first stack of a process that has one.  Under
 * a Python program most of a native stack is the interpreter's: its eval loop
 * and call machinery, several frames for every call from C back into Python,
 * so a stack taken inside a test suite is 64 frames deep, most of them the
 * interpreter's, each a step of libgcc's (250-450 ns here).  Reports fold
 * those frames into one line anyway, and the Python traceback of the object
 * says where the program was; so a stack stops after KF_INTERPRETER_FRAMES of
 * them: the frames above them (the C extension's) and enough of the
 * interpreter to tell which of its functions allocated.
 */
#define KF_INTERPRETER_FRAMES 8
static struct kf_range_pair kf_interpreter;

KF_SIGSAFE _Unwind_Reason_Code kf_trace_frame(struct _Unwind_Context *ctx, void *arg)
{
	struct kf_trace *t = arg;
	uintptr_t pc = kf_gcc_get_ip(ctx);
	if (!pc)
		return _URC_END_OF_STACK;  /* what libgcc reports above _start */
	if (t->skip_self && kf_in_self(pc))
		return _URC_NO_REASON;
	t->skip_self = false;
	t->pc[t->n++] = pc;
	if (pc >= kf_interpreter.lo && pc < kf_interpreter.hi &&
	    ++t->interpreter >= KF_INTERPRETER_FRAMES)
		return _URC_END_OF_STACK;
	return t->n < t->max ? _URC_NO_REASON : _URC_END_OF_STACK;
}

KF_SIGSAFE static int kf_trace(uintptr_t *pcs, int max, bool skip_self)
{
	struct kf_trace t = { .pc = pcs, .max = max, .skip_self = skip_self };
	if (max <= 0 ||
	    atomic_load_explicit(&kf_unwinder_state, memory_order_acquire) != KF_UNWINDER_READY ||
	    !kf_gcc_backtrace || !kf_gcc_get_ip)
		return 0;
	kf_gcc_backtrace(kf_trace_frame, &t);
	return t.n;
}

KF_SIGSAFE int kf_backtrace(uintptr_t *pcs, int max)
{
	return kf_trace(pcs, max, false);
}

/* The executable range of the module containing data[0], into data[1..2]. */
static int kf_find_module(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	uintptr_t *range = data;
	struct kf_range_pair text = kf_text_of(info);
	if (range[0] < text.lo || range[0] >= text.hi)
		return 0;
	range[1] = text.lo;
	range[2] = text.hi;
	return 1;
}

/* Load libgcc_s and take one stack, so that its first-use work is done now. */
static void kf_unwinder_load(void)
{
	void *gcc = dlopen(LIBGCC_S_SO, RTLD_NOW | RTLD_LOCAL);  /* never closed, as glibc's */
	if (gcc) {
		*(void **)&kf_gcc_backtrace = dlsym(gcc, "_Unwind_Backtrace");
		*(void **)&kf_gcc_get_ip = dlsym(gcc, "_Unwind_GetIP");
	}
	dl_iterate_phdr(kf_find_ranges, NULL);
	uintptr_t python[3] = { (uintptr_t)dlsym(RTLD_DEFAULT, "PyObject_Malloc"), 0, 0 };
	if (python[0] && dl_iterate_phdr(kf_find_module, python))
		kf_interpreter = (struct kf_range_pair){ python[1], python[2] };
	if (!kf_gcc_backtrace || !kf_gcc_get_ip) {
		kf_gcc_backtrace = NULL;
		kf_warn("cannot load ", LIBGCC_S_SO, "; objects are recorded without stacks", NULL);
	}
}

bool kf_unwinder_start(uintptr_t caller)
{
	int st = atomic_load_explicit(&kf_unwinder_state, memory_order_acquire);
	if (KF_LIKELY(st == KF_UNWINDER_READY))
		return true;
	/*
	 * The loader allocates in the middle of a dlopen, its lock held and its
	 * list of modules half-updated: not the moment for a dlopen of ours.
	 * (A malloc from inside a dl_iterate_phdr callback, while another thread
	 * is in dlopen, could still make the first load wait on that thread for
	 * good; only the very first stack of a process can meet this.)
	 */
	if (caller >= kf_loader.lo && caller < kf_loader.hi)
		return false;
	if (atomic_compare_exchange_strong(&kf_unwinder_state, &st, KF_UNWINDER_LOADING)) {
		KF_ENTER();  /* the loader's mallocs go to glibc */
		kf_unwinder_load();
		atomic_store_explicit(&kf_unwinder_state, KF_UNWINDER_READY, memory_order_release);
		uintptr_t warm[4];
		kf_trace(warm, 4, false);  /* libgcc's own first-use work, here and not in a fault */
		return true;
	}
	while (atomic_load_explicit(&kf_unwinder_state, memory_order_acquire) == KF_UNWINDER_LOADING)
		sched_yield();  /* another thread is loading it */
	return true;
}

KF_SIGSAFE void kf_unwinder_atfork_child(void)
{
	/* The thread that was loading it is not in this process. */
	int loading = KF_UNWINDER_LOADING;
	atomic_compare_exchange_strong(&kf_unwinder_state, &loading, KF_UNWINDER_NONE);
}

void kf_capture_done(struct kfence_stack *st, const uintptr_t *pcs, int n)
{
	for (int i = 0; i < n; i++)
		st->pc[i] = pcs[i];
	st->depth = (uint32_t)n;
	kf_modules_note(st);  /* so that a reader can place these pcs after we exit */
}


int kfence_register_internal(const void *addr)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	uintptr_t range[3] = { (uintptr_t)addr, 0, 0 };
	if (!dl_iterate_phdr(kf_find_module, range))
		return -1;
	int rc = -1;
	pthread_mutex_lock(&lock);  /* registrations are rare: one at a time */
	int n = atomic_load(&kf_internal_count);
	if (n < 4) {
		kf_internal[n].lo = range[1];
		kf_internal[n].hi = range[2];
		atomic_store_explicit(&kf_internal_count, n + 1, memory_order_release);
		rc = 0;
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

void kf_stack_init(void)
{
	/* Only where things are: the unwinder itself waits for the first stack. */
	dl_iterate_phdr(kf_find_ranges, NULL);
}
