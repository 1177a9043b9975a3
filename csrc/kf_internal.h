/*
 * Internal interface of libkfence.so.  Naming by layer: kfence_ is public
 * (kfence.h), kf_ is internal, kf_os_ wraps a system call (platform.c).
 * docs/ARCHITECTURE.md is the map: planes, files, the slot state machine.
 *
 * === Contexts: who runs this code, and what it may do there ===
 *
 * hot path      malloc.c's entry points, on every call of the program:
 *               a TLS countdown, a range check, a tail call to glibc.  No
 *               lock, no atomic read-modify-write, no system call, no clock.
 * slow path     gate.c and pool.c, when a countdown runs out or a pool
 *               pointer is freed: may take the pool lock (kf_pool_lock),
 *               mprotect, read the clock, unwind (unless the caller is the
 *               unwinder: kf_unwind_safe), load the unwinder at the first
 *               stack of the process (a dlopen: not for an allocation of the
 *               dynamic loader's, kf_unwinder_start), grow the state file,
 *               and read /proc/self/maps and module headers for a module it
 *               has not seen (modules.c: throttled, and not once a sandbox is
 *               announced).  Runs inside KF_ENTER(), so any malloc it causes
 *               goes to glibc.
 * signal        the SIGSEGV/SIGBUS handler and what it calls (fault.c, the
 *               report path: report.c, format.c, symbols.c): only
 *               KF_SIGSAFE functions.  No malloc, no stdio, no dladdr or
 *               dl_iterate_phdr (the loader's lock), never the pool lock; the
 *               print lock is a bounded spin; a BUSY slot is waited for
 *               with a deadline.
 * fork child    the atfork child handler, and kf_become_owner() at the
 *               first slow path or fault of a process made by fork or raw
 *               clone: only what is async-signal-safe until the state is its
 *               own (the parent may have had other threads).  A vfork child
 *               writes nothing of ours (kf_vfork_child).
 * before init   kf_start_state is not READY (the constructor, a malloc from
 *               another constructor, dlsym inside kf_start): every entry
 *               point goes to glibc; kf_start may allocate (inside
 *               KF_ENTER(), from glibc).
 * exit          kf_on_exit (the last atexit handler) and the interposed
 *               _exit family: leak check, then the exit status.
 */
#ifndef KF_INTERNAL_H
#define KF_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <unwind.h>

#include "kfence.h"

#define KF_HIDDEN __attribute__((visibility("hidden")))
#define KF_LIKELY(x) __builtin_expect(!!(x), 1)
#define KF_UNLIKELY(x) __builtin_expect(!!(x), 0)
/* Initial-exec TLS: no __tls_get_addr (which may malloc) on the hot path. */
#define KF_TLS __thread __attribute__((tls_model("initial-exec")))
/*
 * Marks a function the fault handler may reach (the "signal" context
 * above): it is async-signal-safe, allocates nothing and takes no lock it
 * could wait on for good.  Put it on the definition and the declaration.
 */
#define KF_SIGSAFE

/* Per-thread countdown before an unsampled thread looks at the clock again. */
#define KF_CLOCK_CHECK_PERIOD 256
/* Countdown while disabled or paused: the control block is re-read this often. */
#define KF_IDLE_PERIOD 65536

/* === Options (options.c, from options.inc) === */

struct kf_options {
#define KF_OPT_FIELD_UINT(name) uint64_t name;
#define KF_OPT_FIELD_MS(name) uint64_t name;
#define KF_OPT_FIELD_POW2(name) uint64_t name;
#define KF_OPT_FIELD_BOOL(name) bool name;
#define KF_OPT_FIELD_PLACEMENT(name) int name;
#define KF_OPT_FIELD_STR(name) char name[256];
#define KF_OPTION(type, name, def, min, max, when, desc) KF_OPT_FIELD_##type(name)
#include "options.inc"
#undef KF_OPTION
};

KF_HIDDEN extern struct kf_options kf_opt;

/* Parse a KFENCE_OPTIONS string into kf_opt; never allocates, warns per bad item. */
KF_HIDDEN void kf_options_defaults(void);
KF_HIDDEN void kf_options_parse(const char *text, const char *origin);

/* === Start-up, fork and exit (init.c) === */

enum kf_start_state {
	KF_START_NONE = 0,  /* nobody has started the library yet */
	KF_START_RUNNING,   /* kf_start() is running on some thread */
	KF_START_READY,     /* the pool is up */
	KF_START_FAILED     /* off for good (enabled=0, or the pool could not be made) */
};
KF_HIDDEN extern _Atomic int kf_start_state;  /* enum kf_start_state */
/* True when this copy of the library is the process's malloc. */
KF_HIDDEN extern bool kf_interposing;

KF_SIGSAFE static inline bool kf_ready(void)
{
	return atomic_load_explicit(&kf_start_state, memory_order_acquire) == KF_START_READY;
}

/* Start the library once (the first caller does, the others wait): 0, or -1 when it is off. */
KF_HIDDEN int kf_init(const char *options, const char *origin);

/*
 * owned is 0 in a process made by fork or raw clone until it took the state
 * for its own; pid is the process whose memory this is (0 after a raw clone).
 */
struct kf_owner {
	uint32_t owned, pid;
};
KF_HIDDEN extern volatile struct kf_owner *kf_owner;
KF_SIGSAFE KF_HIDDEN bool kf_become_owner(void);
/* A vfork child: it shares its parent's memory (and records) until it execs or exits. */
KF_SIGSAFE KF_HIDDEN bool kf_vfork_child(void);

/* Before writing the state: a new process first makes it its own.  False in a vfork child. */
KF_SIGSAFE static inline bool kf_check_owner(void)
{
	return KF_LIKELY(kf_owner->owned) || kf_become_owner();
}

/* === Threads (gate.c) === */

struct kf_thread {
	int32_t countdown;  /* allocations left before the slow path looks */
	bool in_lib;        /* re-entrancy guard: set while the library works (KF_ENTER) */
	uint32_t tid;       /* cached gettid(); reset in the child after fork */
	uint64_t rng;       /* xorshift state, 0 until seeded */
	uint32_t frees;     /* check_free: frees looked at, for the image table's refresh */
	uintptr_t stack_lo, stack_hi;  /* check_free: this thread's stack; hi 0 until known */
};
KF_HIDDEN extern KF_TLS struct kf_thread kf_self;

/*
 * The re-entrancy guard, one way: KF_ENTER() at the top of a block marks
 * this thread as inside the library until the block is left, by any path
 * (a cleanup attribute restores the value it found), so that malloc called
 * from inside (by dlsym, the unwinder...) goes straight to glibc.
 */
KF_SIGSAFE static inline bool kf_enter(void)
{
	bool was = kf_self.in_lib;
	kf_self.in_lib = true;
	return was;
}
KF_SIGSAFE static inline void kf_leave(const bool *was)
{
	kf_self.in_lib = *was;
}
#define KF_ENTER() bool kf_was_in_lib_ __attribute__((cleanup(kf_leave))) = kf_enter()

/* === The sampling gate (gate.c) === */

/*
 * The slow path behind every allocation entry point: NULL means "use glibc".
 * caller: where the allocation is made, what the coverage filter keys on: the
 * return address of the entry point, or for an interpreter's allocation
 * (kfence_sample) the address of the instruction it runs (0 if unknown: never
 * skipped as covered).  Only a return address can fall in the unwinder's or
 * the loader's text, which the gate also checks it against.
 */
KF_HIDDEN void *kf_sample_alloc(int32_t *countdown, size_t size, size_t align, int cache,
				 bool zero, uintptr_t caller);
/* This thread's xorshift generator. */
KF_SIGSAFE KF_HIDDEN uint64_t kf_random(void);

/* === The pool (pool.c) === */

/*
 * Read on every free() to tell pool pointers apart, so one cache line, no
 * atomics: pool_start/pool_size are written once before any pointer of the
 * pool exists and never change.
 */
struct kf_pool_range {
	uintptr_t start;
	uintptr_t size;
};
KF_HIDDEN extern struct kf_pool_range kf_pool;
KF_HIDDEN extern size_t kf_page;
KF_HIDDEN extern struct kfence_state *kf_state;
KF_HIDDEN extern struct kfence_slot *kf_slots;
/* The library's private records (shadows, freelist...), which the leak scan skips. */
KF_HIDDEN extern struct kf_range {
	uintptr_t lo, hi;
} kf_private;
/* Per slot: its metadata may be read and written (state.c); all 1 in private memory. */
KF_HIDDEN extern uint8_t *kf_slot_backed;

KF_SIGSAFE static inline bool kf_is_pool_address(const void *p)
{
	return (uintptr_t)p - kf_pool.start < kf_pool.size;
}

/*
 * The addresses whose free takes kf_free_slow(): the pool's, or with
 * check_free every address.  The same two loads and one compare as
 * kf_is_pool_address, so the option costs the hot path nothing when off.
 */
KF_HIDDEN extern struct kf_pool_range kf_free_filter;
KF_SIGSAFE static inline bool kf_free_filtered(const void *p)
{
	return (uintptr_t)p - kf_free_filter.start < kf_free_filter.size;
}

/* The slot whose data page holds pool address p, or -1 for a guard page. */
KF_SIGSAFE static inline long kf_addr_slot(uintptr_t p)
{
	size_t pg = (p - kf_pool.start) / kf_page;
	return (pg & 1) ? (long)(pg - 1) / 2 : -1;
}

/* Slot metadata, or NULL for no slot or one the state file has no room for yet. */
KF_SIGSAFE static inline struct kfence_slot *kf_slot_meta(long slot)
{
	return slot >= 0 && kf_slot_backed[slot] ? &kf_slots[slot] : NULL;
}

KF_SIGSAFE static inline void kf_count(int counter, int64_t delta)
{
	atomic_fetch_add_explicit((_Atomic uint64_t *)&kf_state->counters[counter],
				  (uint64_t)delta, memory_order_relaxed);
}

/* Canary byte for an address, KFENCE's pattern. */
KF_SIGSAFE static inline uint8_t kf_canary(uintptr_t addr)
{
	return (uint8_t)(0xaa ^ (addr & 0x7));
}

/*
 * A guarded object whatever the sampling decision; NULL with errno set
 * (keep_errno < 0), or with errno set to keep_errno on every path, the caller
 * then falling back to glibc.  The sampling path calls it last, as a tail
 * call: one frame less for the unwinder to walk through (which is why cache
 * and zero share one argument: a seventh would go on the stack, and a call
 * with stack arguments from a function that has none is no tail call).
 * align: right-placed objects start at a multiple of it (0: the align option).
 * kind: an enum kfence_cache, | KF_ZERO for a zeroed object.
 * site: kf_site() of where it is allocated, for the coverage filter (0: the
 * first frame of its allocation stack).
 */
#define KF_ZERO 0x100u
_Static_assert(KFENCE_CACHE_KINDS < KF_ZERO, "a cache fits below KF_ZERO");
KF_HIDDEN void *kf_guarded_alloc(size_t size, size_t align, int placement, unsigned kind,
				 uint32_t site, int keep_errno);
/*
 * Free of a pool pointer (guarded path); reports invalid frees.  caller as
 * above; family is the deallocator's (enum kfence_family), size what a sized
 * delete was given (0: none).  Keeps errno.
 */
KF_HIDDEN void kf_pool_free(void *p, uintptr_t caller, int family, size_t size);
/* Every live object's canaries checked (a sweep), changed ones reported. */
KF_HIDDEN void kf_pool_sweep(void);
/* A sweep if the controller asked for one (control canary_sweep changed). */
KF_HIDDEN void kf_sweep_if_asked(const struct kfence_control *c);
/* True when p is the start of a live pool object; its size in *size. */
KF_HIDDEN bool kf_pool_live(const void *p, size_t *size);
KF_SIGSAFE KF_HIDDEN uintptr_t kf_slot_page(size_t slot);
/* A guard page the fault handler opened, to close again at the next alloc. */
KF_SIGSAFE KF_HIDDEN void kf_mark_guard_open(size_t guard_index);
/* Bytes of private records for n slots, and their set-up in priv (before the pool is published). */
KF_HIDDEN size_t kf_pool_private_size(size_t n);
KF_HIDDEN void kf_pool_setup(struct kfence_state *s, void *priv, size_t priv_size);
/* The pool lock: freelist, slot backing, sealing.  Never taken in the signal context. */
KF_HIDDEN void kf_pool_lock(void);
KF_HIDDEN void kf_pool_unlock(void);
/* In a new process whose lock may be held by a thread it does not have. */
KF_SIGSAFE KF_HIDDEN void kf_pool_lock_reset(void);

/* === Allocation coverage (coverage.c) === */

/* The filter for a pool of n slots, at start-up; false if there is no memory for it. */
KF_HIDDEN bool kf_coverage_init(size_t num_slots);
/* The allocation site of a call from caller (a return address), hashed; 0 for none. */
KF_SIGSAFE KF_HIDDEN uint32_t kf_site(uintptr_t caller);
/* A live guarded object of site h comes (delta 1) or goes (-1); h 0 is no site. */
KF_HIDDEN void kf_coverage_add(uint32_t h, int delta);
/* True (and counted) when this allocation is to be skipped: pool pressed, site covered. */
KF_HIDDEN bool kf_coverage_skip(const struct kfence_control *c, uint32_t site);

/* === Stacks (stack.c) === */

/* One stack being taken: libgcc calls kf_trace_frame for each frame. */
struct kf_trace {
	uintptr_t *pc;
	int n, max;
	bool skip_self;  /* leave out the leading frames of this library */
	int interpreter;  /* frames of the Python interpreter kept so far */
};
/* libgcc's _Unwind_Backtrace once loaded; NULL before, or if it could not be. */
KF_HIDDEN extern _Unwind_Reason_Code (*kf_gcc_backtrace)(_Unwind_Trace_Fn, void *);
KF_SIGSAFE KF_HIDDEN _Unwind_Reason_Code kf_trace_frame(struct _Unwind_Context *ctx, void *arg);
/* The n pcs taken into st, with the modules they are in. */
KF_HIDDEN void kf_capture_done(struct kfence_stack *st, const uintptr_t *pcs, int n);
/*
 * The unwinder is loaded (now, on the first call); false when an allocation
 * from caller must not be the one to load it (the dynamic loader's own).
 */
KF_HIDDEN bool kf_unwinder_start(uintptr_t caller);

/*
 * Stack of the caller, our own frames left out (loading the unwinder if need
 * be).  Inlined into its callers, always: libgcc unwinds every frame between
 * the unwinder and the program, ours too (each a lookup of its FDE and a run
 * of its CFI program, about 250 ns here), and this function and the one it
 * called were two more frames on each of the two stacks of a sampled cycle.
 */
static inline __attribute__((always_inline)) void kf_capture_stack(struct kfence_stack *st)
{
	uintptr_t pcs[KFENCE_STACK_MAX];
	struct kf_trace t = { .pc = pcs, .skip_self = true };
	t.max = (int)(kf_opt.stack_depth < KFENCE_STACK_MAX ? kf_opt.stack_depth : KFENCE_STACK_MAX);
	if (kf_unwinder_start(0) && kf_gcc_backtrace && t.max > 0)
		kf_gcc_backtrace(kf_trace_frame, &t);
	kf_capture_done(st, pcs, t.n);
}
/* Up to max return addresses from here, ours included; 0 while the unwinder is not loaded. */
KF_SIGSAFE KF_HIDDEN int kf_backtrace(uintptr_t *pcs, int max);
/* In a new process: a load another thread had begun will not finish. */
KF_SIGSAFE KF_HIDDEN void kf_unwinder_atfork_child(void);
/* False when code at pc may hold the unwinder's lock: do not unwind from there. */
KF_SIGSAFE KF_HIDDEN bool kf_unwind_safe(uintptr_t pc);
/* True for a pc in this library or a module registered as internal. */
KF_SIGSAFE KF_HIDDEN bool kf_in_self(uintptr_t pc);
/* At start-up: where this library, the loader and (if loaded) the unwinder are. */
KF_HIDDEN void kf_stack_init(void);

/* === Interposition (malloc.c) === */

/* True when this copy of the library is the process's malloc. */
KF_HIDDEN bool kf_detect_interposing(void);
/* A free() or delete whose address passed kf_free_filtered(); family and size as kf_pool_free. */
KF_HIDDEN void kf_free_slow(void *p, uintptr_t caller, int family, size_t size);
/* The free filter for the options in force, once the pool is up. */
KF_HIDDEN void kf_free_filter_init(void);
/* An object of family alloc freed by family dealloc is a mismatch worth reporting. */
KF_HIDDEN bool kf_family_mismatch(int alloc, int dealloc);

/* === Frees of what is not heap (nonheap.c) === */

/* check_free: report p if it is plainly not heap memory (true: reported, keep it from glibc). */
KF_HIDDEN bool kf_nonheap_free(void *p, uintptr_t caller);
/* The table of module images, (re)read now. */
KF_HIDDEN void kf_images_refresh(void);
/* At start, with check_free: where the heap starts, and the first table. */
KF_HIDDEN void kf_nonheap_init(void);
/* Find glibc's malloc_usable_size and aligned_alloc (no __libc_ names). */
KF_HIDDEN void kf_resolve_libc(void);

/* === Reports (report.c: record and emit; format.c: text; symbols.c) === */

struct kf_report_in {
	int kind;              /* enum kfence_bug */
	int access;            /* enum kfence_access */
	uintptr_t addr;
	int64_t distance;
	long slot;             /* -1: none */
	const struct kfence_stack *stack;
	uintptr_t fault_pc;    /* the faulting instruction, 0 outside the fault path */
	const uint8_t *corrupted;
	uint32_t corrupted_mask;
	int detail;            /* enum kfence_detail; 0 (NONE) for most */
	int dealloc;           /* enum kfence_family of the deallocator, for MISMATCH/SIZE_MISMATCH */
	uint64_t value;        /* the detail's {value} */
};

/*
 * Record and print a report, once per object and kind; true if printed.
 * With halt_on_error it does not return.
 */
KF_SIGSAFE KF_HIDDEN bool kf_report(const struct kf_report_in *in);
/* kf_report() of the object as the caller copied it, not as its slot is now (NULL: now). */
KF_SIGSAFE KF_HIDDEN bool kf_report_object(const struct kf_report_in *in,
					   const struct kfence_slot *object);
KF_SIGSAFE KF_HIDDEN void kf_report_atfork_child(void);
/* The function the return address pc is in has a name starting with prefix (symbols.c). */
KF_HIDDEN bool kf_function_named(uintptr_t pc, const char *prefix);
KF_SIGSAFE KF_HIDDEN int kf_report_fd_open(void);
KF_SIGSAFE KF_HIDDEN void kf_report_fd_close(int fd);

#define KF_REPORT_RULE_LINE "=================================================================="
#define KF_REPORT_RULE KF_REPORT_RULE_LINE "\n"
#define KF_REPORT_TITLE "BUG: KFENCE: "
/* The report's text into out[cap]; its length. */
KF_SIGSAFE KF_HIDDEN size_t kf_format_report(const struct kf_report_in *in,
					     const struct kfence_slot *m, char *out, size_t cap);
/* One line saying a report could not be printed in full; its length. */
KF_SIGSAFE KF_HIDDEN size_t kf_format_fallback(const struct kf_report_in *in, char *out,
					       size_t cap);

/* Small formatter that never allocates, for reports and warnings. */
struct kf_buf {
	char *p;
	size_t len, cap;
};
KF_SIGSAFE KF_HIDDEN void kf_buf_str(struct kf_buf *b, const char *s);
KF_SIGSAFE KF_HIDDEN void kf_buf_dec(struct kf_buf *b, uint64_t v);
KF_SIGSAFE KF_HIDDEN void kf_buf_hex(struct kf_buf *b, uint64_t v, int width);
/* One line "kfence: <parts...>\n" where reports go; the list of strings ends with NULL. */
KF_SIGSAFE KF_HIDDEN void kf_warn(const char *first, ...) __attribute__((sentinel));
/*
 * A start-up warning is said once per process tree: the ones in env
 * (KFENCE_WARNED, at start-up) are not said again, and the ones start-up
 * said are put there for the programs this one execs (at its end).
 */
KF_HIDDEN void kf_warn_inherit(const char *env);
/* True the first time what is said in this process tree (as a start-up warning is). */
KF_HIDDEN bool kf_first_in_tree(const char *what);
KF_HIDDEN void kf_warn_bequeath(void);

/* A frame, described: module path and offset, function and offset. */
struct kf_frame {
	const char *module;  /* path of the module, "?" when unknown */
	uintptr_t module_off;
	const char *sym;     /* NULL when unknown */
	uintptr_t sym_off;
};
/*
 * Symbols of one report, without the loader's lock: begin, want every
 * address (exact: a faulting pc; else a return address), load (one pass
 * over /proc/self/maps), describe any of them, end.  Report lock held.
 */
KF_SIGSAFE KF_HIDDEN void kf_symbols_begin(void);
KF_SIGSAFE KF_HIDDEN void kf_symbols_want(uintptr_t pc, bool exact);
KF_SIGSAFE KF_HIDDEN void kf_symbols_load(void);
KF_SIGSAFE KF_HIDDEN void kf_describe(uintptr_t pc, bool exact, struct kf_frame *f);
KF_SIGSAFE KF_HIDDEN void kf_symbols_end(void);

/* An executable mapping of a file, from a line of /proc/self/maps (path not NUL-terminated). */
struct kf_map {
	uint64_t lo, hi, off;  /* [lo, hi) maps the file from offset off */
	const char *path;
	size_t path_len;
};
/*
 * One pass over /proc/self/maps, a line at a time in buf: the executable
 * file mappings go to the report's addresses (report: report lock held)
 * and to the module table (modules: kf_modules_begin() said yes).
 */
KF_SIGSAFE KF_HIDDEN bool kf_maps_read(char *buf, size_t cap, bool report, bool modules);
/* The file of the mapping [lo, hi) of path (through /proc/self/map_files if deleted); -1. */
KF_SIGSAFE KF_HIDDEN int kf_map_open(const char *path, uint64_t lo, uint64_t hi);

/* === The module table (modules.c) === */

/*
 * Every executable file mapping a recorded stack reached, with its load
 * bias and build-id, kept in private memory and copied into the state.
 */
/* pc (or pc - 1) lies in a module of the table, or the table has no room to learn more. */
KF_SIGSAFE KF_HIDDEN bool kf_modules_known(uintptr_t pc);
/* The path of the module holding pc (its bias in *bias), or NULL. */
KF_SIGSAFE KF_HIDDEN const char *kf_modules_find(uintptr_t pc, uint64_t *bias);
/* Slow path, after a stack is captured: learn the modules of pcs the table lacks. */
KF_HIDDEN void kf_modules_note(const struct kfence_stack *st);
/* The table may be written: true when this thread is its one writer until kf_modules_end(). */
KF_SIGSAFE KF_HIDDEN bool kf_modules_begin(void);
/* A mapping of the maps (kf_maps_read): recorded if new. */
KF_SIGSAFE KF_HIDDEN void kf_modules_map(const struct kf_map *map);
/* The new entries go into the state; the writer's turn ends. */
KF_SIGSAFE KF_HIDDEN void kf_modules_end(void);
/* Copy into s the entries it does not have (reserving file space first). */
KF_SIGSAFE KF_HIDDEN void kf_modules_publish(struct kfence_state *s);
/* The table as this process has it: *count entries, *paths_len bytes of paths. */
KF_SIGSAFE KF_HIDDEN const struct kfence_module *kf_modules_table(uint32_t *count,
								   const char **paths,
								   uint32_t *paths_len);
/* Before a sandbox: every module now, and no more reads of the maps from the slow path. */
KF_HIDDEN void kf_modules_seal(void);
/* In a new process: the writer that held the table may be a thread it does not have. */
KF_SIGSAFE KF_HIDDEN void kf_modules_atfork_child(void);

/* === Fault handler (fault.c) === */

KF_HIDDEN int kf_install_fault_handler(void);
/* glibc's own definition of name (in libc itself when it is loaded), or NULL. */
KF_HIDDEN void *kf_libc_sym(const char *name);
/* glibc's own name(sig) of the System V calls, for the other signals; -1 (ENOSYS) if none. */
KF_HIDDEN int kf_libc_sysv_call(const char *name, int sig);

/* SIGSEGV 0, SIGBUS 1 (their bits in a mask view, their records in sigchain.c), else -1. */
KF_SIGSAFE static inline int kf_sig_index(int sig)
{
	return sig == SIGSEGV ? 0 : sig == SIGBUS ? 1 : -1;
}

/* The view bits of a mask. */
KF_SIGSAFE static inline unsigned kf_bits_of(const sigset_t *set)
{
	return (sigismember(set, SIGSEGV) == 1) | (sigismember(set, SIGBUS) == 1) << 1;
}

KF_SIGSAFE static inline void kf_strip(sigset_t *set)
{
	sigdelset(set, SIGSEGV);
	sigdelset(set, SIGBUS);
}

/* The program's own actions (sigchain.c). */

/* Our handler is the kernel's action for SIGSEGV and SIGBUS (the program's is recorded). */
KF_HIDDEN extern _Atomic bool kf_installed;
/* Find glibc's signal() and sysv_signal(). */
KF_HIDDEN void kf_sigchain_resolve(void);
/* Put handler first in the kernel for SIGSEGV and SIGBUS, recording the program's: 0 or -1. */
KF_HIDDEN int kf_sigchain_install(void (*handler)(int, siginfo_t *, void *));
/* Run the program's action for sig, as the kernel would have run it. */
KF_SIGSAFE KF_HIDDEN void kf_chain(int sig, siginfo_t *si, ucontext_t *uc);
/* The default action of sig: SIG_DFL back in the kernel, and we are no longer installed. */
KF_SIGSAFE KF_HIDDEN void kf_default_action(int sig, const siginfo_t *si);

/* The program's view of its mask (sigmask.c). */

/* Find glibc's mask, longjmp and thread functions: false if one it cannot do without is missing. */
KF_HIDDEN bool kf_sigmask_resolve(void);
/* pthread_sigmask() as the program sees it. */
KF_SIGSAFE KF_HIDDEN int kf_mask(int how, const sigset_t *set, sigset_t *old);
/* True when this thread's view blocks sig (SIGSEGV or SIGBUS). */
KF_SIGSAFE KF_HIDDEN bool kf_view_blocks(int sig);
/* A sent sig the view blocks: raised again when the view unblocks it. */
KF_SIGSAFE KF_HIDDEN void kf_view_hold(int sig);
/*
 * Give this thread mask as a chained handler is entered with it (SIGSEGV
 * and SIGBUS to the view, the rest to the kernel); returns the view to put
 * back with kf_view_set() when the handler returns.
 */
KF_SIGSAFE KF_HIDDEN unsigned kf_view_enter(const sigset_t *mask);
/* Set this thread's view; sent signals it no longer blocks are delivered now. */
KF_SIGSAFE KF_HIDDEN void kf_view_set(unsigned view);

/* What a pool address means (diagnose.c). */

/* The pool as a diagnosis sees it: its geometry, and how to read a slot's metadata. */
struct kf_pool_view {
	uintptr_t start, size;
	size_t page;
	size_t num_slots;
	/*
	 * A copy of slot's metadata into *copy: returns the state copied, or
	 * UNUSED (copy untouched) for a slot never used or out of range, or
	 * BUSY when no consistent copy could be had (copy then holds garbage).
	 * KF_SIGSAFE, as kf_diagnose() is.
	 */
	uint32_t (*read_slot)(void *ctx, long slot, struct kfence_slot *copy);
	void *ctx;
};
/*
 * What a fault at a means (enum kfence_diagnosis), with the finding in *out
 * and, when out->slot >= 0, the object blamed as it was read in *obj.
 */
KF_SIGSAFE KF_HIDDEN int kf_diagnose(const struct kf_pool_view *pool, uintptr_t a,
				     struct kfence_finding *out, struct kfence_slot *obj);
/*
 * This process's pool, read through waits for BUSY slots and consistent
 * copies, with one bounded wait (*deadline) for the whole diagnosis.
 */
KF_SIGSAFE KF_HIDDEN void kf_live_pool_view(struct kf_pool_view *pool, uint64_t *deadline);

/* === State file (state.c) === */

/* A new state (in private memory) for n slots over the pool; NULL if no memory. */
KF_HIDDEN struct kfence_state *kf_state_new(size_t n, uintptr_t pool, size_t pool_size);

/* The state is a <state_dir>/<pid>.state file mapping (else private memory). */
KF_HIDDEN extern bool kf_state_shared;
/*
 * Move s into a new sparse <dir>/<pid>.state (header and live objects; the
 * rest reserved on first use): 0 or an errno.
 */
KF_SIGSAFE KF_HIDDEN int kf_state_publish(struct kfence_state *s, const char *dir);
/* Reserve [off, off + len) of the state file before writing it there (true in private memory). */
KF_SIGSAFE KF_HIDDEN bool kf_state_reserve(uint64_t off, uint64_t len);
/* Reserve report ring entry i before writing it; false if impossible. */
KF_SIGSAFE KF_HIDDEN bool kf_state_back_report(size_t i);
/* Report ring entry i may be read (it is reserved, or the state is private). */
KF_SIGSAFE KF_HIDDEN bool kf_state_report_backed(size_t i);
/* Replace the shared mapping s by a private copy in place (stacks lost if memory is short). */
KF_SIGSAFE KF_HIDDEN void kf_state_privatize(struct kfence_state *s);
/* What this process knows of each slot, in private memory: a fork copies it as it is. */
struct kf_shadow {
	uint32_t state, generation;
	uint64_t addr, size;
	uint32_t site;  /* kf_site of the allocation while ALLOCATED (coverage.c) */
	uint32_t reserved;
};
KF_HIDDEN extern struct kf_shadow *kf_shadow;
/* Store a slot's new state (ALLOCATED or FREED; release order), bumping its generation. */
KF_SIGSAFE KF_HIDDEN void kf_slot_publish(size_t slot, uint32_t state);
/* Reserve every slot's metadata now (before a sandbox forbids it later). */
KF_HIDDEN void kf_state_seal(void);
/* Reserve file space for a slot's metadata before its first use; false if impossible. */
KF_HIDDEN bool kf_state_back_slot(size_t slot);

/* === Leak check (leak.c) === */

KF_HIDDEN void kf_leak_check(void);

/* === Platform (platform.c) === */

KF_HIDDEN void *kf_os_reserve(size_t size);
/* Readable, writable, zeroed anonymous memory, NULL on failure. */
KF_SIGSAFE KF_HIDDEN void *kf_os_map(size_t size);
KF_SIGSAFE KF_HIDDEN int kf_os_protect(uintptr_t addr, size_t size, bool accessible);
/* Map a readable, writable page at addr (in the pool) as a mapping of its own. */
KF_SIGSAFE KF_HIDDEN int kf_os_map_own_page(uintptr_t addr, size_t size);
/* Make a freed object's pages inaccessible; their memory stays for the slot's next use. */
KF_SIGSAFE KF_HIDDEN int kf_os_discard(uintptr_t addr, size_t size);
KF_SIGSAFE KF_HIDDEN void kf_os_unmap(void *addr, size_t size);
KF_SIGSAFE KF_HIDDEN void kf_os_write_all(int fd, const void *s, size_t n);
/* NULL if dir exists (or was made) 0700 and ours, else why not. */
KF_HIDDEN const char *kf_os_prepare_state_dir(const char *dir);
KF_SIGSAFE KF_HIDDEN uint32_t kf_os_gettid(void);
/* Every signal blocked on this thread (the old mask in *saved), and back. */
KF_SIGSAFE KF_HIDDEN void kf_os_block_signals(sigset_t *saved);
KF_SIGSAFE KF_HIDDEN void kf_os_restore_signals(const sigset_t *saved);
KF_SIGSAFE KF_HIDDEN uint64_t kf_os_random64(void);
KF_HIDDEN long kf_os_max_map_count(void);
/* A description of errno value err without locale or allocation (unlike strerror). */
KF_SIGSAFE KF_HIDDEN const char *kf_os_strerror(int err);
KF_SIGSAFE KF_HIDDEN uint64_t kf_now_ns(void);
KF_SIGSAFE KF_HIDDEN uint32_t kf_tid(void);

#endif
