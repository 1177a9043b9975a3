/*
 * Reports: record, format, emit.  A report is recorded in the state's ring
 * (the controller's copy, kept even if it is never printed), formatted into
 * one static buffer (format.c) and written whole to stderr or the report
 * file.  This runs inside the SIGSEGV handler, so nothing here allocates,
 * uses stdio or waits for good: the print lock is a bounded spin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kf_internal.h"

static char kf_report_text[65536];
static _Atomic uint32_t kf_report_owner;  /* tid writing a report, 0 if none */

/*
 * Buckets printed by this process (dedup_reports): kind, access site and
 * allocation site, hashed; 0 is an empty entry.  A full table prints.
 */
#define KF_BUCKETS 1024
static _Atomic uint32_t kf_printed[KF_BUCKETS];

KF_SIGSAFE static bool kf_report_lock(void)
{
	uint32_t me = kf_tid(), expected = 0;
	/*
	 * Bounded: a report must never hang its host.  A writer stuck for that
	 * long (stderr a full pipe) costs us this report, not two at once in
	 * one buffer.
	 */
	for (int spins = 0; spins < 200000; spins++) {
		expected = 0;
		if (atomic_compare_exchange_weak(&kf_report_owner, &expected, me))
			return true;
		if (expected == me)
			return false;  /* a fault while reporting: give up this one */
		sched_yield();
	}
	return false;
}

KF_SIGSAFE void kf_report_atfork_child(void)
{
	/* The thread that was reporting does not exist in the child. */
	atomic_store(&kf_report_owner, 0);
	/* A new process prints its own bugs, even those its parent printed. */
	for (int i = 0; i < KF_BUCKETS; i++)
		atomic_store_explicit(&kf_printed[i], 0, memory_order_relaxed);
}

KF_SIGSAFE static void kf_report_unlock(void)
{
	atomic_store(&kf_report_owner, 0);
}

/* Why the report file was refused, said once per process; reports go to stderr. */
KF_SIGSAFE static void kf_report_file_refused(const char *path, const char *why)
{
	static _Atomic bool warned;
	if (!atomic_exchange(&warned, true))
		kf_warn("not writing reports to ", path, ": ", why, "; reporting to stderr", NULL);
}

KF_SIGSAFE int kf_report_fd_open(void)
{
	if (!kf_opt.report_path[0])
		return 2;
	char path[300];
	struct kf_buf b = { path, 0, sizeof(path) - 1 };
	kf_buf_str(&b, kf_opt.report_path);
	kf_buf_str(&b, ".");
	kf_buf_dec(&b, (uint64_t)getpid());
	path[b.len] = '\0';
	/*
	 * Whoever can write to the directory can plant a name there before we
	 * open it: a symbolic link (a root process would append its report to
	 * any file) or a FIFO (open and write would block in the SIGSEGV
	 * handler for good).  So no links, no waiting, and a regular file of
	 * our own, not a second name of another file.  0600, as the state:
	 * stacks and addresses are nobody else's business.
	 */
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
		      0600);
	if (fd < 0) {
		/* strerror() is not async-signal-safe: name the likely causes ourselves. */
		kf_report_file_refused(path, errno == ELOOP ? "it is a symbolic link" :
					     errno == ENXIO ? "it is a FIFO or socket" :
					     errno == EACCES || errno == EPERM ? "permission denied" :
					     "it cannot be opened");
		return 2;
	}
	struct stat st;
	const char *why = fstat(fd, &st) != 0 ? "fstat failed" :
			  !S_ISREG(st.st_mode) ? "it is not a regular file" :
			  st.st_uid != geteuid() ? "it belongs to another user" :
			  st.st_nlink != 1 ? "it has other hard links" : NULL;
	if (why) {
		close(fd);
		kf_report_file_refused(path, why);
		return 2;
	}
	return fd;
}

KF_SIGSAFE void kf_report_fd_close(int fd)
{
	if (fd != 2)
		close(fd);
}

/*
 * Record a report in the shared ring.  The entry is claimed by the atomic
 * add, so no lock is needed: a reader sees the bug even if it is never
 * printed.  (Only KFENCE_MAX_REPORTS reports in flight at once could share one.)
 */
KF_SIGSAFE static void kf_record(const struct kf_report_in *in, const struct kfence_slot *m,
				 uint32_t bucket)
{
	uint64_t seq = atomic_fetch_add((_Atomic uint64_t *)&kf_state->reports_written, 1) + 1;
	size_t entry = (size_t)((seq - 1) % kf_state->max_reports);
	if (!kf_state_back_report(entry))
		return;  /* the state file is full: counted and printed, not recorded */
	struct kfence_report *r = (struct kfence_report *)((char *)kf_state + kf_state->reports_offset) +
				  entry;
	atomic_store_explicit((_Atomic uint64_t *)&r->sequence, 0, memory_order_relaxed);
	r->kind = (uint32_t)in->kind;
	r->access = (uint32_t)in->access;
	r->addr = in->addr;
	r->distance = in->distance;
	r->slot = (int32_t)in->slot;
	r->tid = kf_tid();
	r->ns = kf_now_ns() - kf_state->start_ns;
	r->stack = *in->stack;
	if (m)
		r->object = *m;
	else
		memset(&r->object, 0, sizeof(r->object));
	memset(r->corrupted, 0, sizeof(r->corrupted));
	if (in->corrupted)
		memcpy(r->corrupted, in->corrupted, sizeof(r->corrupted));
	r->corrupted_mask = in->corrupted_mask;
	r->bucket = bucket;
	r->repeats = 0;
	r->detail = (uint32_t)in->detail;
	r->dealloc = (uint32_t)in->dealloc;
	r->detail_value = in->value;
	atomic_store_explicit((_Atomic uint64_t *)&r->sequence, seq, memory_order_release);
}

/*
 * The report lock timed out (another thread is stuck writing, or we faulted
 * while reporting): one short line instead, written only if the report file
 * or stderr takes it at once.  A full pipe, the likely reason for the
 * timeout, gets nothing.
 */
KF_SIGSAFE static void kf_report_fallback(const struct kf_report_in *in)
{
	char line[160];
	size_t n = kf_format_fallback(in, line, sizeof(line));
	int saved = errno, fd = kf_report_fd_open();
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
		ssize_t w = write(fd, line, n);  /* once: a short write is let go */
		(void)w;
	}
	kf_report_fd_close(fd);
	errno = saved;
}

/* Write the formatted report whole to its destination. */
KF_SIGSAFE static void kf_emit(const char *text, size_t n)
{
	int fd = kf_report_fd_open();
	kf_os_write_all(fd, text, n);
	kf_report_fd_close(fd);
}

KF_SIGSAFE static uint32_t kf_bucket(const struct kf_report_in *in, const struct kfence_slot *m)
{
	uint64_t h = (uint64_t)in->kind * 0x9e3779b97f4a7c15ull;
	h ^= in->stack->depth ? in->stack->pc[0] : 0;
	h *= 0xff51afd7ed558ccdull;
	/* The allocation site: the first frames of its stack (a wrapper's callers differ). */
	for (uint32_t i = 0; m && i < m->alloc_stack.depth && i < 8; i++) {
		h ^= m->alloc_stack.pc[i];
		h *= 0x100000001b3ull;
	}
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 32;
	return (uint32_t)h | 1;
}

/* True when bucket b was printed before; else it is marked printed now. */
KF_SIGSAFE static bool kf_seen(uint32_t b)
{
	for (uint32_t i = 0; i < KF_BUCKETS; i++) {
		_Atomic uint32_t *e = &kf_printed[(b + i) % KF_BUCKETS];
		uint32_t cur = atomic_load_explicit(e, memory_order_relaxed);
		if (cur == b)
			return true;
		if (!cur && atomic_compare_exchange_strong(e, &cur, b))
			return false;
		if (cur == b)
			return true;  /* another thread marked it first */
	}
	return false;
}

/* A repeat of bucket b: counted on its recorded report, if the ring still holds it. */
KF_SIGSAFE static void kf_count_repeat(uint32_t b)
{
	struct kfence_report *r = (struct kfence_report *)((char *)kf_state + kf_state->reports_offset);
	kf_count(KFENCE_COUNTER_REPEATED, 1);
	for (uint32_t i = 0; i < kf_state->max_reports; i++)
		if (kf_state_report_backed(i) &&
		    atomic_load_explicit((_Atomic uint64_t *)&r[i].sequence, memory_order_acquire) &&
		    r[i].bucket == b)
			atomic_fetch_add_explicit((_Atomic uint32_t *)&r[i].repeats, 1,
						  memory_order_relaxed);
}

bool kf_function_named(uintptr_t pc, const char *prefix)
{
	/* The symbol machinery is the report path's: it runs under the print lock. */
	if (!pc || !kf_report_lock())
		return false;
	struct kf_frame f;
	kf_symbols_begin();
	kf_symbols_want(pc, false);
	kf_symbols_load();
	kf_describe(pc, false, &f);
	bool named = f.sym && !strncmp(f.sym, prefix, strlen(prefix));
	kf_symbols_end();
	kf_report_unlock();
	return named;
}

KF_SIGSAFE bool kf_report(const struct kf_report_in *in)
{
	return kf_report_object(in, NULL);
}

KF_SIGSAFE bool kf_report_object(const struct kf_report_in *in, const struct kfence_slot *object)
{
	struct kfence_slot *slot = in->slot >= 0 ? &kf_slots[in->slot] : NULL;
	const struct kfence_slot *m = object ? object : slot;
	/* Once per object and kind; a copy of an object since replaced marks nothing. */
	if (slot && (!object || __atomic_load_n(&slot->alloc_ns, __ATOMIC_RELAXED) == object->alloc_ns)) {
		/* A free by the wrong family has a bit of its own: a later double free still shows. */
		bool family = in->detail == KFENCE_DETAIL_MISMATCH ||
			      in->detail == KFENCE_DETAIL_SIZE_MISMATCH;
		uint32_t bit = 1u << (family ? KFENCE_BUG_KINDS : in->kind);
		if (atomic_fetch_or((_Atomic uint32_t *)&slot->reported, bit) & bit)
			return false;
	}
	KF_ENTER();
	uint32_t bucket = kf_bucket(in, m);
	if (kf_opt.dedup_reports && kf_seen(bucket)) {
		kf_count(KFENCE_COUNTER_BUGS, 1);
		kf_count_repeat(bucket);
		return false;
	}
	/*
	 * Recorded and counted before the print lock: the once-per-object bit
	 * is set, so a report the lock loses would otherwise be lost for good,
	 * and with it the exit status.
	 */
	kf_record(in, m, bucket);
	kf_count(KFENCE_COUNTER_BUGS, 1);
	bool printed = kf_report_lock();
	if (printed) {
		kf_emit(kf_report_text, kf_format_report(in, m, kf_report_text, sizeof(kf_report_text)));
		kf_report_unlock();
	} else {
		kf_report_fallback(in);
	}
	if (kf_opt.halt_on_error && in->kind != KFENCE_BUG_LEAK)
		abort();
	return printed;
}
