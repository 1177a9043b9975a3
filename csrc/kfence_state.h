/*
 * The contract between libkfence.so and everything that reads its state: the
 * layout of the state (counters, per-slot metadata, recent reports, the
 * control block and the module table, in one versioned mapping), and every
 * enum with its names.
 * It is stated here once; Python reads it through cffi (build_ffi.py runs
 * the C preprocessor over this file with KFENCE_CDEF defined and hands the
 * result to cdef), and the C side builds its name tables from the same lists.
 *
 * Another process (the controller, a post-mortem reader) decodes this
 * layout, so the structs are plain C with fixed-width fields.  Bump
 * KFENCE_STATE_VERSION on any change to a struct below; the sizes are pinned
 * with static asserts in api.c.
 *
 * The lists are X-macros: KFENCE_FOO(X) calls X once per entry.  Adding an
 * entry here is all it takes for the enum, the C name table, and the Python
 * side (which reads the names from the library) to know it.
 */
#ifndef KFENCE_STATE_H
#define KFENCE_STATE_H

#ifndef KFENCE_CDEF
#include <stdint.h>
#endif

enum kfence_layout {
	KFENCE_STATE_VERSION = 3,
	KFENCE_STACK_MAX = 64,         /* frames per recorded stack */
	KFENCE_NOTE_SIZE = 512,        /* text under a stack (a Python traceback) */
	KFENCE_MAX_REPORTS = 64,       /* the report ring */
	KFENCE_COUNTER_SLOTS = 16,     /* room in counters[] (KFENCE_COUNTER_COUNT used) */
	KFENCE_CONTROL_SLOTS = 16,     /* room in the control block (uint32_t fields) */
	KFENCE_CORRUPTION_WINDOW = 16, /* bytes shown of a corrupted canary */
	KFENCE_MAX_MODULES = 512,      /* the module table */
	KFENCE_MODULE_PATHS = 65536,   /* bytes for the module table's paths */
	KFENCE_BUILD_ID_MAX = 32       /* bytes kept of a GNU build-id (SHA-1's are 20) */
};

/* X(ID, name): the life of a pool slot. */
#define KFENCE_SLOT_STATES(X) \
	X(UNUSED, "unused")       /* never handed out */ \
	X(ALLOCATED, "allocated") \
	X(FREED, "freed") \
	X(BUSY, "busy")           /* being allocated or freed by one thread */

/*
 * X(ID, name, headline, with_access): a kind of bug.  name follows "BUG:
 * KFENCE: " in a report's title; headline starts its first line; with_access
 * is 1 when the kind has a read or write access, shown after both.
 */
#define KFENCE_BUGS(X) \
	X(OOB, "out-of-bounds", "Out-of-bounds ", 1)            /* access to a guard page */ \
	X(UAF, "use-after-free", "Use-after-free ", 1)          /* access to a freed object */ \
	X(CORRUPTION, "memory corruption", "Corrupted memory at ", 0) /* canary changed */ \
	X(INVALID, "invalid", "Invalid ", 1)                    /* pool access of no object */ \
	X(INVALID_FREE, "invalid free", "Invalid free of ", 0)  /* double, interior, stray */ \
	X(LEAK, "memory leak", "Unreferenced object ", 0)       /* unreferenced at exit */

/* X(ID, name): the access a fault made. */
#define KFENCE_ACCESSES(X) \
	X(NONE, "") \
	X(READ, "read") \
	X(WRITE, "write")

/*
 * X(ID, allocator, deallocator): a family of allocation functions.  An
 * object must be freed by its family's deallocator (alloc_dealloc_mismatch).
 */
#define KFENCE_FAMILIES(X) \
	X(MALLOC, "malloc()", "free()")  /* and calloc, realloc, memalign, kfence_alloc, PyMem */ \
	X(NEW, "operator new", "operator delete") \
	X(NEW_ARRAY, "operator new[]", "operator delete[]")

/* X(ID, name, family): which entry point allocated a guarded object ("cache=" in reports). */
#define KFENCE_CACHES(X) \
	X(MALLOC, "malloc", MALLOC) \
	X(CALLOC, "calloc", MALLOC) \
	X(REALLOC, "realloc", MALLOC) \
	X(MEMALIGN, "memalign", MALLOC) \
	X(API, "kfence_alloc", MALLOC)  /* kfence_alloc(): a buffer asked for on purpose */ \
	X(PYMEM, "pymem", MALLOC)       /* CPython's allocator domains */ \
	X(NEW, "new", NEW)              /* operator new, all its variants */ \
	X(NEW_ARRAY, "new[]", NEW_ARRAY)

/*
 * X(ID, name, text): why a report is what it is, in one sentence printed
 * under its first line.  The text's fields: {allocator} and {deallocator}
 * (the object's family and the one that freed it), {value} (the report's
 * detail value), {size} (the object's size), {module} (the module whose
 * code is at the detail value: TEXT, RODATA, DATA and BSS keep an address of
 * the module's code there, as a .bss has no file to be named by).  The C formatter and Python fill them alike.
 */
#define KFENCE_DETAILS(X) \
	X(NONE, "", "") \
	X(DOUBLE_FREE, "double-free", "The object was already freed.") \
	X(NOT_START, "interior", "The address is {value}B inside the object, not at its start.") \
	X(GUARD, "outside", "The address is outside the object, next to it.") \
	X(NO_OBJECT, "no-object", "The address is in the kfence pool where no object is.") \
	X(MISMATCH, "mismatch", \
	  "The object was allocated by {allocator} and is freed by {deallocator}.") \
	X(SIZE_MISMATCH, "size-mismatch", \
	  "The size given to {deallocator} is {value}; the object's size is {size}.") \
	X(STACK, "stack", "The address is on the stack of thread {value}, not from the heap.") \
	X(TEXT, "text", "The address is in the code of {module}, not from the heap.") \
	X(RODATA, "rodata", "The address is in read-only data of {module}, not from the heap.") \
	X(DATA, "data", "The address is in .data of {module}, not from the heap.") \
	X(BSS, "bss", "The address is in .bss of {module}, not from the heap.") \
	X(MISALIGNED, "misaligned", \
	  "The address is not {value}-byte aligned: no allocation function returned it.") \
	X(METADATA, "metadata", "The address is in kfence's own metadata, not from the heap.") \
	X(SWEEP, "sweep", \
	  "A canary check of live objects found this; the object is still allocated.")

/* X(ID, name): where an object sits in its page (the placement option). */
#define KFENCE_PLACEMENTS(X) \
	X(RANDOM, "random") \
	X(LEFT, "left")    /* at the page's start: underflows fault */ \
	X(RIGHT, "right")  /* at its end: overflows fault */

/*
 * X(ID, name, type, metric, label, help): a counter.  name is its line in
 * `kfence-py stats` (KFENCE's debugfs names); type is GAUGE or COUNTER; the
 * Prometheus family is kfence_<metric>, with reason="<label>" when label is
 * not empty; help is the family's help text.
 */
#define KFENCE_COUNTERS(X) \
	X(ALLOCATED, "currently allocated", GAUGE, "allocated_objects", "", \
	  "Guarded objects currently allocated") \
	X(ALLOCS, "total allocations", COUNTER, "allocations", "", "Guarded allocations") \
	X(FREES, "total frees", COUNTER, "frees", "", "Guarded frees") \
	X(BUGS, "total bugs", COUNTER, "bugs", "", "Bugs reported") \
	X(SKIP_CAPACITY, "skipped allocations (capacity)", COUNTER, "skipped_allocations", \
	  "capacity", KFENCE_SKIP_HELP) \
	X(SKIP_TOO_LARGE, "skipped allocations (too large)", COUNTER, "skipped_allocations", \
	  "too_large", KFENCE_SKIP_HELP) \
	X(SKIP_ALIGNMENT, "skipped allocations (alignment)", COUNTER, "skipped_allocations", \
	  "alignment", KFENCE_SKIP_HELP) \
	X(SKIP_MAP_FAILED, "skipped allocations (map failed)", COUNTER, "skipped_allocations", \
	  "map_failed", KFENCE_SKIP_HELP) \
	X(LEAK_REFERENCED, "referenced at exit", COUNTER, "referenced_at_exit", "", \
	  "Guarded objects live at exit and still referenced (leak_check=1)") \
	X(SKIP_COVERED, "skipped allocations (covered)", COUNTER, "skipped_allocations", \
	  "covered", KFENCE_SKIP_HELP) \
	X(REPEATED, "repeated bugs", COUNTER, "repeated_bugs", "", \
	  "Bugs not printed: the same kind, access site and allocation site as one printed before") \
	X(SWEEPS, "canary sweeps", COUNTER, "canary_sweeps", "", \
	  "Canary checks of every live guarded object (at exit, or asked for by canary_sweep)")
#define KFENCE_SKIP_HELP "Sampled allocations that fell through to glibc, by reason"

#define KFENCE_ENUM_ENTRY2(prefix, id) prefix##id,
#define KFENCE_SLOT_ENUM(id, name) KFENCE_ENUM_ENTRY2(KFENCE_SLOT_, id)
#define KFENCE_BUG_ENUM(id, name, headline, with_access) KFENCE_ENUM_ENTRY2(KFENCE_BUG_, id)
#define KFENCE_ACCESS_ENUM(id, name) KFENCE_ENUM_ENTRY2(KFENCE_ACCESS_, id)
#define KFENCE_FAMILY_ENUM(id, allocator, deallocator) KFENCE_ENUM_ENTRY2(KFENCE_FAMILY_, id)
#define KFENCE_CACHE_ENUM(id, name, family) KFENCE_ENUM_ENTRY2(KFENCE_CACHE_, id)
#define KFENCE_DETAIL_ENUM(id, name, text) KFENCE_ENUM_ENTRY2(KFENCE_DETAIL_, id)
#define KFENCE_PLACEMENT_ENUM(id, name) KFENCE_ENUM_ENTRY2(KFENCE_PLACE_, id)
#define KFENCE_COUNTER_ENUM(id, name, type, metric, label, help) \
	KFENCE_ENUM_ENTRY2(KFENCE_COUNTER_, id)

enum kfence_slot_state { KFENCE_SLOT_STATES(KFENCE_SLOT_ENUM) KFENCE_SLOT_STATE_COUNT };
enum kfence_bug { KFENCE_BUGS(KFENCE_BUG_ENUM) KFENCE_BUG_KINDS };
enum kfence_access { KFENCE_ACCESSES(KFENCE_ACCESS_ENUM) KFENCE_ACCESS_KINDS };
enum kfence_family { KFENCE_FAMILIES(KFENCE_FAMILY_ENUM) KFENCE_FAMILY_KINDS };
enum kfence_cache { KFENCE_CACHES(KFENCE_CACHE_ENUM) KFENCE_CACHE_KINDS };
enum kfence_detail { KFENCE_DETAILS(KFENCE_DETAIL_ENUM) KFENCE_DETAIL_KINDS };
enum kfence_placement { KFENCE_PLACEMENTS(KFENCE_PLACEMENT_ENUM) KFENCE_PLACEMENT_KINDS };
enum kfence_counter { KFENCE_COUNTERS(KFENCE_COUNTER_ENUM) KFENCE_COUNTER_COUNT };

struct kfence_stack {
	uint32_t depth;
	uint32_t reserved;
	uint64_t pc[KFENCE_STACK_MAX];
};

struct kfence_slot {
	uint32_t state;      /* enum kfence_slot_state; changed by CAS only */
	uint32_t reported;   /* bit (1 << kind) per bug already reported; atomic OR */
	uint64_t addr;       /* object start; valid from ALLOCATED on */
	uint64_t size;       /* requested size */
	uint32_t cache;      /* enum kfence_cache */
	uint32_t alloc_tid;
	uint32_t free_tid;
	uint32_t generation; /* bumped at each allocation and free of the slot */
	uint64_t alloc_ns;   /* ns since kfence_state.start_ns */
	uint64_t free_ns;
	struct kfence_stack alloc_stack;
	struct kfence_stack free_stack;
	/* Text printed under each stack (the Python traceback); written by its owner. */
	char alloc_note[KFENCE_NOTE_SIZE];
	char free_note[KFENCE_NOTE_SIZE];
};

struct kfence_report {
	uint64_t sequence;   /* 1-based; 0 marks an empty record */
	uint32_t kind;       /* enum kfence_bug */
	uint32_t access;     /* enum kfence_access */
	uint64_t addr;       /* faulting or freed address */
	int64_t distance;    /* OOB: bytes left (<0) or right (>0) of the object */
	int32_t slot;        /* -1 when no object is involved */
	uint32_t tid;
	uint64_t ns;
	struct kfence_stack stack;   /* faulting access, or the bad free */
	struct kfence_slot object;   /* the object as it was when reported */
	uint8_t corrupted[KFENCE_CORRUPTION_WINDOW];       /* corruption: bytes from the first bad one */
	uint32_t corrupted_mask;     /* bit i: corrupted[i] differs from canary */
	uint32_t bucket;             /* kind, access site and allocation site, hashed */
	uint32_t repeats;            /* later reports of the same bucket, not printed (dedup) */
	uint32_t detail;             /* enum kfence_detail: the sentence under the first line */
	uint32_t dealloc;            /* enum kfence_family of the deallocator (MISMATCH, SIZE_MISMATCH) */
	uint64_t detail_value;       /* the detail's {value} */
};

/*
 * An executable mapping of a file that a recorded stack reached, as
 * /proc/self/maps showed it: a reader in another process, or on another
 * machine after this one has exited, turns a recorded pc into module+offset
 * (pc - bias, the link-time address that symbolizers take) and finds the
 * module's debug information by its build-id.  Entries are only appended.
 */
struct kfence_module {
	uint64_t start;          /* [start, end): the mapping */
	uint64_t end;
	uint64_t bias;           /* load address: pc - bias is the address in the ELF file */
	uint64_t file_offset;    /* of start in the file */
	uint32_t path;           /* offset of its NUL-terminated path in the state's paths */
	uint32_t build_id_size;  /* 0: none found (not ELF, unreadable, or no NT_GNU_BUILD_ID) */
	uint8_t build_id[KFENCE_BUILD_ID_MAX];
};

/*
 * The options marked RUNTIME in options.inc, in its order: written by the
 * controller, read by the data plane on its slow path.
 */
struct kfence_control {
#define KFENCE_CONTROL_RUNTIME(name) uint32_t name;
#define KFENCE_CONTROL_START(name)
#define KF_OPTION(type, name, def, min, max, when, desc) KFENCE_CONTROL_##when(name)
#include "options.inc"
#undef KF_OPTION
#undef KFENCE_CONTROL_RUNTIME
#undef KFENCE_CONTROL_START
};

struct kfence_state {
	char magic[8];           /* "KFENCE\0\0" */
	uint32_t version;
	uint32_t header_size;    /* sizeof(struct kfence_state) */
	uint32_t slot_size;      /* sizeof(struct kfence_slot) */
	uint32_t report_size;    /* sizeof(struct kfence_report) */
	uint32_t num_slots;
	uint32_t max_reports;    /* reports[] is a ring of this many */
	uint64_t total_size;     /* bytes in the whole mapping */
	uint64_t slots_offset;   /* from the start of this struct */
	uint64_t reports_offset;
	uint32_t pid;
	uint32_t page_size;
	uint64_t pool_start;
	uint64_t pool_size;
	uint64_t start_ns;       /* CLOCK_MONOTONIC at start */
	uint64_t start_realtime_ns;
	union {                  /* room for more RUNTIME options without a new layout */
		struct kfence_control control;
		uint32_t control_room[KFENCE_CONTROL_SLOTS];
	};
	uint64_t counters[KFENCE_COUNTER_SLOTS];   /* enum kfence_counter */
	uint64_t reports_written;
	/* The module table, after the reports: max_modules entries of module_size bytes. */
	uint64_t modules_offset;
	uint64_t paths_offset;   /* paths_size bytes: "\0", then each module's path */
	uint32_t module_size;    /* sizeof(struct kfence_module) */
	uint32_t max_modules;
	uint32_t paths_size;
	uint32_t num_modules;    /* entries in use, each whole before it is counted (release) */
};

/*
 * What a pool address means, as the fault handler decides it: the answer of
 * kfence_diagnose() (kfence.h).  Not part of the state layout.
 */
enum kfence_diagnosis {
	KFENCE_DIAGNOSIS_BAD_STATE = -1,  /* wrong magic, version or layout, or no page size */
	KFENCE_DIAGNOSIS_NOT_OURS = 0,    /* outside the pool */
	KFENCE_DIAGNOSIS_BUG = 1,         /* a fault there is a bug: the finding says which */
	KFENCE_DIAGNOSIS_LIVE = 2         /* in a live object's data page: no bug */
};

struct kfence_finding {
	uint32_t kind;          /* enum kfence_bug: OOB, UAF or INVALID; KFENCE_BUG_KINDS: none */
	int32_t slot;           /* the object blamed (or, LIVE, the live one); -1 when none */
	int64_t distance;       /* OOB: bytes left (<0) or right (>0) of the object, as in reports */
	uint64_t addr;          /* the address diagnosed */
	uint64_t page;          /* the start of its pool page (0: not ours) */
	int64_t guard;          /* that page's index among the guard pages; -1: a data page */
	uint32_t slot_state;    /* enum kfence_slot_state of slot as read; UNUSED when slot is -1 */
	uint32_t reserved;
	uint64_t object_addr;   /* slot's object as read: its start and requested size */
	uint64_t object_size;
};

#endif
