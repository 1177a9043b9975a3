/*
 * The public interface of libkfence.so beyond the malloc family it
 * interposes.  The Python package calls these through cffi (build_ffi.py
 * runs the C preprocessor over this file with KFENCE_CDEF defined and feeds
 * the result to cdef), so: declarations cffi can parse once preprocessed.
 */
#ifndef KFENCE_H
#define KFENCE_H

#ifndef KFENCE_CDEF
#include <stddef.h>
#endif
#include "kfence_state.h"

/* Version of the library, "major.minor.patch". */
const char *kfence_version(void);

/*
 * Start the pool and the fault handler in this process with the given
 * KFENCE_OPTIONS-style string (NULL: read KFENCE_OPTIONS).  When the library
 * is already running (preloaded, or called before) this changes nothing and
 * returns 0.  Returns -1 when the detector could not start (it then stays
 * off and the reason was printed once).
 */
int kfence_init(const char *options);

/* 1 when the pool is up and sampling is possible. */
int kfence_is_initialized(void);

/* 1 when this copy of the library is the process's malloc (LD_PRELOAD). */
int kfence_is_interposing(void);

/* The shared state, or NULL before kfence_init(). */
struct kfence_state *kfence_state(void);

/*
 * A guarded object on purpose, whatever the sampling decision: placement an
 * enum kfence_placement, cache an enum kfence_cache; align a power of two up
 * to the page size (0: the align option); zero clears it.  NULL with errno ENOSPC when the pool is
 * full, EINVAL for bad arguments, ENOMEM when the pool is down.
 */
void *kfence_alloc(size_t size, size_t align, int placement, int zero,
		   int cache);

/*
 * The sampling decision of the malloc hooks, for another allocator's hooks
 * (CPython's): keep a countdown starting at 0, decrement it at each
 * allocation, and call this when it is 0 or less.  It sets *countdown to
 * the allocations before asking again, and returns a guarded object if this
 * one is sampled, else NULL (use your allocator).  where: the place the
 * allocation is made, for the covered-site filter (skip_covered_thresh): a
 * value equal for allocations from one place and different between places,
 * e.g. the address of the interpreter's current bytecode instruction; 0 if
 * unknown (such an allocation is never skipped as covered).  It must not be
 * a code address of the unwinder or the loader.
 */
void *kfence_sample(int32_t *countdown, size_t size, size_t align, int cache, int zero,
		    uintptr_t where);

/*
 * Leave the frames of the module containing addr out of recorded stacks, as
 * the library's own are (for allocator hooks living elsewhere).  0, or -1.
 */
int kfence_register_internal(const void *addr);

/*
 * 1 when ptr is the start of a guarded object, live or freed (a pointer an
 * allocator hook may have handed out, and may see again in a double free).
 */
int kfence_is_object_start(const void *ptr);

/* Requested size of a live guarded object into *size: 0, or -1 when ptr is none. */
int kfence_object_size(const void *ptr, size_t *size);

/* Free any pointer: pool objects through the guarded path, the rest to glibc. */
void kfence_free(void *ptr);

/*
 * Attach text to a live guarded object, printed in reports under its
 * allocation stack (which 0) or its free stack (which 1; call it just before
 * the free).  The Python hooks put the Python traceback here.  Returns 0, or
 * -1 when ptr is not the start of a live guarded object.
 */
int kfence_annotate(const void *ptr, int which, const char *text);

/* 1 when ptr lies in the pool (object, canary or guard page). */
int kfence_is_pool_address(const void *ptr);

/* One entry of the option table (options.inc); the strings are static. */
struct kfence_option_desc {
	const char *name;
	const char *type;           /* UINT, MS, POW2, BOOL, PLACEMENT or STR */
	const char *default_value;
	const char *when;           /* START or RUNTIME (a field of struct kfence_control) */
	const char *description;
	unsigned long long min, max;
};

/* The option table: index i from 0 to kfence_option_count() - 1; NULL out of range. */
size_t kfence_option_count(void);
const struct kfence_option_desc *kfence_option_desc(size_t i);

/*
 * Check one option: 0 and its canonical text (as the library prints it) in
 * out, or -1 and why not (e.g. "expected an integer in 1..65536") in why.
 * The one validator: Python's options use it too.
 */
int kfence_option_normalize(const char *key, const char *value, char *out, size_t out_size,
			    char *why, size_t why_size);

/*
 * key=value as one item of a KFENCE_OPTIONS text: the value checked and
 * canonical (as kfence_option_normalize gives it), in quotes when it holds a
 * separator.  0, or -1 and why not in why.
 */
int kfence_option_item(const char *key, const char *value, char *out, size_t out_size,
		       char *why, size_t why_size);

/* What kfence_options_next found: a key=value item, or why it is not one. */
enum kfence_item_status {
	KFENCE_ITEM_OK = 0,
	KFENCE_ITEM_NOT_KEY_VALUE = 1,  /* no '=' before the next separator */
	KFENCE_ITEM_UNTERMINATED = 2    /* a quoted value with no closing quote */
};

/* One item of a KFENCE_OPTIONS text, as offsets into the text. */
struct kfence_options_item {
	size_t start, len;         /* the whole item, quotes included */
	size_t key, key_len;
	size_t value, value_len;   /* without its quotes; 0, 0 when status is NOT_KEY_VALUE */
	int status;                /* enum kfence_item_status */
};

/*
 * The grammar of KFENCE_OPTIONS, the sanitizers': name=value items separated
 * by any run of spaces, commas, colons, tabs, newlines or carriage returns; a
 * value that starts with ' or " runs to the same quote.  Reads the item at or
 * after *pos and moves *pos past it: 1, or 0 at the end of text.  The one
 * tokenizer: the library's parser and Python's use it.
 */
int kfence_options_next(const char *text, size_t *pos, struct kfence_options_item *item);

/*
 * Check a KFENCE_OPTIONS string without applying it: one "kfence:" warning
 * line on stderr per refused item, as at start-up.  Returns how many.
 */
int kfence_options_check(const char *text);

/* The value in force, as text, of option name; NULL when unknown. */
const char *kfence_option_value(const char *name);

/* The fixed words of a report: the rule line before and after it, and its title's start. */
struct kfence_report_words {
	const char *rule, *title;
};
const struct kfence_report_words *kfence_report_words(void);

/* The lists of kfence_state.h, entry by entry; NULL when out of range. */
struct kfence_bug_desc {
	const char *name, *headline;
	int with_access;
};
struct kfence_counter_desc {
	const char *name, *type, *metric, *label, *help;
};
struct kfence_family_desc {
	const char *allocator, *deallocator;
};
struct kfence_detail_desc {
	const char *name, *text;
};
const struct kfence_bug_desc *kfence_bug_desc(int kind);
const struct kfence_family_desc *kfence_family_desc(int family);
int kfence_cache_family(int cache);  /* enum kfence_family of a cache; -1 out of range */
const struct kfence_detail_desc *kfence_detail_desc(int detail);
const struct kfence_counter_desc *kfence_counter_desc(int counter);
const char *kfence_slot_state_name(int state);
const char *kfence_access_name(int access);
const char *kfence_cache_name(int cache);
const char *kfence_placement_name(int placement);

/*
 * What a fault at addr would mean, as the fault handler decides it: which
 * bug (out-of-bounds, use-after-free, invalid), which object, how far from
 * it.  state is a copy of a whole state (a state file read into memory:
 * the caller vouches that its total_size bytes are readable; the header's
 * offsets and sizes are checked against that) or this process's own
 * (kfence_state()).  Returns an enum
 * kfence_diagnosis; *out is written unless it is KFENCE_DIAGNOSIS_BAD_STATE.
 * Async-signal-safe: the program's own crash handler may call it.
 */
int kfence_diagnose(const struct kfence_state *state, uint64_t addr, struct kfence_finding *out);

#endif
