/*
 * The state kfence_py shares with its control plane: counters, per-slot
 * metadata, recent reports and the control block, in one versioned mapping.
 *
 * Another process (the controller, a post-mortem reader) decodes this layout,
 * so it is plain C with fixed-width fields and literal array sizes, and no
 * macros: build_ffi.py hands this file to cffi's cdef unchanged.  The sizes
 * are pinned with static asserts in state.c; bump KFENCE_STATE_VERSION there
 * on any change.
 */
#ifndef KFENCE_STATE_H
#define KFENCE_STATE_H

#include <stdint.h>

enum kfence_slot_state {
	KFENCE_SLOT_UNUSED = 0,     /* never handed out */
	KFENCE_SLOT_ALLOCATED = 1,
	KFENCE_SLOT_FREED = 2,
	KFENCE_SLOT_BUSY = 3        /* being allocated or freed by one thread */
};

enum kfence_bug {
	KFENCE_BUG_OOB = 0,          /* out-of-bounds access to a guard page */
	KFENCE_BUG_UAF = 1,          /* access to the page of a freed object */
	KFENCE_BUG_CORRUPTION = 2,   /* canary bytes changed, found at free */
	KFENCE_BUG_INVALID = 3,      /* pool access attributable to no object */
	KFENCE_BUG_INVALID_FREE = 4, /* double free, interior or stray pointer */
	KFENCE_BUG_LEAK = 5,         /* unreferenced at exit (leak_check=1) */
	KFENCE_BUG_KINDS = 6
};

enum kfence_access {
	KFENCE_ACCESS_NONE = 0,
	KFENCE_ACCESS_READ = 1,
	KFENCE_ACCESS_WRITE = 2
};

/* Which entry point allocated a guarded object ("cache=" in reports). */
enum kfence_cache {
	KFENCE_CACHE_MALLOC = 0,
	KFENCE_CACHE_CALLOC = 1,
	KFENCE_CACHE_REALLOC = 2,
	KFENCE_CACHE_MEMALIGN = 3,
	KFENCE_CACHE_API = 4,        /* kfence_alloc(): a buffer asked for on purpose */
	KFENCE_CACHE_PYMEM = 5,      /* CPython's allocator domains */
	KFENCE_CACHE_KINDS = 6
};

enum kfence_counter {
	KFENCE_COUNTER_ALLOCATED = 0,        /* currently allocated */
	KFENCE_COUNTER_ALLOCS = 1,           /* total allocations */
	KFENCE_COUNTER_FREES = 2,            /* total frees */
	KFENCE_COUNTER_BUGS = 3,             /* total bugs reported */
	KFENCE_COUNTER_SKIP_CAPACITY = 4,    /* sampled, but every slot was in use */
	KFENCE_COUNTER_SKIP_TOO_LARGE = 5,   /* sampled, larger than a page */
	KFENCE_COUNTER_SKIP_ALIGNMENT = 6,   /* sampled, alignment above a page */
	KFENCE_COUNTER_SKIP_MAP_FAILED = 7,  /* mprotect/mmap refused */
	KFENCE_COUNTER_LEAK_REFERENCED = 8,  /* live at exit, still referenced */
	KFENCE_COUNTER_COUNT = 9
};

struct kfence_stack {
	uint32_t depth;
	uint32_t reserved;
	uint64_t pc[64];
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
	char alloc_note[512];
	char free_note[512];
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
	uint8_t corrupted[16];       /* corruption: bytes from the first bad one */
	uint32_t corrupted_mask;     /* bit i: corrupted[i] differs from canary */
	uint32_t reserved;
};

/* Written by the controller; read by the data plane on its slow path. */
struct kfence_control {
	uint32_t enabled;
	uint32_t sample_interval_ms;
	uint32_t sample_rate;
	uint32_t burst;
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
	struct kfence_control control;
	uint64_t counters[16];   /* enum kfence_counter */
	uint64_t reports_written;
};

#endif
