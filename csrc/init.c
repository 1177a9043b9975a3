/*
 * Start-up, and the life of a process around the pool: a new process made
 * by fork or clone takes the state for its own, a sandbox is prepared for,
 * and the exit status says a bug was reported.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kf_internal.h"

_Atomic int kf_start_state;
bool kf_interposing;

/*
 * Which process the state belongs to.  It lives in a page the kernel zeroes
 * in a child (MADV_WIPEONFORK), so a process made by fork() or by a raw
 * clone() (which runs no atfork handler) sees owned == 0 at its first slow
 * path and takes the state for its own before it writes any
 * (kf_check_owner).  A vfork child shares the page: pid, the process whose
 * memory this is, tells it apart.
 */
static struct kf_owner kf_owner_fallback = { 1, 0 };

KF_SIGSAFE bool kf_vfork_child(void)
{
	uint32_t pid = kf_owner->pid;
	return pid && pid != (uint32_t)getpid();
}
volatile struct kf_owner *kf_owner = &kf_owner_fallback;


/*
 * A new process (fork, or raw clone) takes the state for its own: a file of
 * its own with a copy of the slots in use (the objects it inherited), or a
 * private copy; its own counters and reports start from zero.  False in a
 * vfork child of a process that has not taken its own yet: that is the
 * parent's to do, and the child writes nothing.
 */
KF_SIGSAFE bool kf_become_owner(void)
{
	/* The pid whose thread is at it: one left by a parent (fork mid-way) is stale. */
	static _Atomic uint32_t adopting;
	uint32_t me = (uint32_t)getpid();
	if (kf_owner->pid && kf_owner->pid != me)
		return false;
	sigset_t saved;
	kf_os_block_signals(&saved);  /* a handler on this thread must not wait for us */
	for (;;) {
		uint32_t cur = 0;
		if (atomic_compare_exchange_strong(&adopting, &cur, me) ||
		    (cur != me && atomic_compare_exchange_strong(&adopting, &cur, me)))
			break;
		if (kf_owner->owned)
			break;
		sched_yield();  /* another thread of this process is at it */
	}
	if (atomic_load(&adopting) != me || kf_owner->owned) {
		if (atomic_load(&adopting) == me)
			atomic_store(&adopting, 0);
		kf_os_restore_signals(&saved);
		return true;
	}
	KF_ENTER();
	/* After a raw clone the lock may be held by a thread this process does not have. */
	kf_pool_lock_reset();
	kf_report_atfork_child();
	kf_modules_atfork_child();
	kf_unwinder_atfork_child();
	kf_self.tid = 0;
	kf_self.rng = 0;
	struct kfence_state *s = kf_state;
	int err = kf_state_shared ? kf_state_publish(s, kf_opt.state_dir) : -1;
	if (err > 0) {
		kf_state_privatize(s);
		kf_warn("cannot publish the state of a new process in ", kf_opt.state_dir, ": ",
			kf_os_strerror(err), "; keeping it private", NULL);
	}
	s->pid = me;
	memset(s->counters, 0, sizeof(s->counters));
	/* The objects it inherited are its own; the parent's count may have moved on. */
	for (size_t i = 0; i < s->num_slots; i++)
		s->counters[KFENCE_COUNTER_ALLOCATED] += kf_shadow[i].state == KFENCE_SLOT_ALLOCATED;
	/* A new file's ring is empty already (and touching it costs a page fault a page). */
	struct kfence_report *r = (struct kfence_report *)((char *)s + s->reports_offset);
	for (uint32_t i = 0; err && i < s->max_reports; i++)
		r[i].sequence = 0;
	s->reports_written = 0;
	kf_owner->pid = me;
	kf_owner->owned = 1;
	atomic_store(&adopting, 0);
	kf_os_restore_signals(&saved);
	return true;
}

static void kf_atfork_child(void)
{
	kf_pool_unlock();
	kf_unwinder_atfork_child();
	kf_self.tid = 0;
	kf_self.rng = 0;
	/*
	 * The state is taken lazily, at the child's first slow path (a child
	 * that execs or exits at once never pays for one); kf_shadow keeps what
	 * the child's memory holds until then.  The page is wiped already where
	 * MADV_WIPEONFORK works; owned = 0 is for the kernels without it.
	 */
	kf_owner->owned = 0;
	kf_owner->pid = (uint32_t)getpid();
}

/* The exit status a process leaves with: exitcode when it reported a bug itself. */
static int kf_exit_status(int status)
{
	if (!kf_ready() || !kf_owner->owned ||
	    kf_state->pid != (uint32_t)getpid())  /* a vfork child: its parent's state */
		return status;
	return kf_state->counters[KFENCE_COUNTER_BUGS] ? (int)kf_opt.exitcode : status;
}

typedef void kf_exit_fn(int);
static kf_exit_fn *kf_libc_exit, *kf_libc_quick_exit;

/* _exit and _Exit skip exit handlers (and so kf_on_exit): the status is set here. */
void _exit(int status)
{
	status = kf_exit_status(status);
	if (kf_libc_exit)
		kf_libc_exit(status);
	for (;;)
		syscall(SYS_exit_group, status);
}

void _Exit(int status) __attribute__((alias("_exit"), noreturn));

void quick_exit(int status)
{
	status = kf_exit_status(status);
	if (kf_libc_quick_exit)
		kf_libc_quick_exit(status);
	_exit(status);
}

static int (*kf_libc_prctl)(int, unsigned long, unsigned long, unsigned long, unsigned long);

/*
 * A program about to sandbox itself with seccomp (no_new_privs comes first)
 * may then forbid the system calls that taking a state of its own, or
 * growing its file, would make later: both are done now.
 */
int prctl(int option, ...)
{
	va_list ap;
	va_start(ap, option);
	unsigned long a2 = va_arg(ap, unsigned long), a3 = va_arg(ap, unsigned long);
	unsigned long a4 = va_arg(ap, unsigned long), a5 = va_arg(ap, unsigned long);
	va_end(ap);
	if ((option == PR_SET_SECCOMP || option == PR_SET_NO_NEW_PRIVS) &&
	    kf_ready() && kf_check_owner()) {
		kf_unwinder_start(0);  /* a sandbox may forbid the dlopen later */
		kf_modules_seal();
		kf_pool_lock();
		kf_state_seal();
		kf_pool_unlock();
	}
	if (kf_libc_prctl)
		return kf_libc_prctl(option, a2, a3, a4, a5);
	return (int)syscall(SYS_prctl, option, a2, a3, a4, a5);
}

static void kf_on_exit(int status, void *arg)
{
	(void)status;
	(void)arg;
	if (!kf_ready())
		return;
	KF_ENTER();
	/* Only a process that touched its state has bugs of its own to count. */
	if ((kf_opt.leak_check || kf_opt.sweep_at_exit) && kf_check_owner())
		kf_pool_sweep();
	if (kf_opt.leak_check && kf_check_owner())
		kf_leak_check();
	int code = kf_exit_status(0);
	if (code) {
		/* We run after every other exit handler; stdio is flushed after us. */
		fflush(NULL);
		_exit(code);
	}
}

/* Slots the pool may have: every slot can cost two mappings, and the program needs its own. */
static size_t kf_cap_slots(size_t want)
{
	long maps = kf_os_max_map_count();
	long budget = maps > 32768 ? maps - 16384 : maps / 2;
	size_t cap = budget > 3 ? (size_t)(budget - 1) / 2 : 1;
	if (want > cap) {
		char n[24];
		struct kf_buf b = { n, 0, sizeof(n) - 1 };
		kf_buf_dec(&b, cap);
		n[b.len] = '\0';
		kf_warn("num_objects capped to ", n, " by vm.max_map_count", NULL);
		return cap;
	}
	return want;
}

static int kf_start(const char *options, const char *origin)
{
	kf_page = (size_t)sysconf(_SC_PAGESIZE);
	kf_warn_inherit(getenv("KFENCE_WARNED"));
	kf_options_defaults();
	kf_options_parse(options, origin);
	if (!kf_opt.enabled)
		return -1;

	size_t n = kf_cap_slots(kf_opt.num_objects);
	size_t pool_size = (2 * n + 1) * kf_page;
	size_t priv_size = kf_pool_private_size(n);
	void *pool = kf_os_reserve(pool_size);
	struct kfence_state *s = pool ? kf_state_new(n, (uintptr_t)pool, pool_size) : NULL;
	void *priv = s ? kf_os_map(priv_size) : NULL;
	if (!priv) {
		kf_warn("cannot map the pool; running without detection", NULL);
		if (s)
			kf_os_unmap(s, s->total_size);
		if (pool)
			kf_os_unmap(pool, pool_size);
		return -1;
	}
	kf_pool_setup(s, priv, priv_size);
	if (!kf_coverage_init(n))
		kf_warn("no memory for the coverage filter; allocations are not skipped as covered",
			NULL);
	if (kf_opt.state_dir[0]) {
		const char *why = kf_os_prepare_state_dir(kf_opt.state_dir);
		/* Absolute: a child publishes after the program may have changed directory. */
		char abs[PATH_MAX];
		if (!why && realpath(kf_opt.state_dir, abs) && strlen(abs) < sizeof(kf_opt.state_dir))
			strcpy(kf_opt.state_dir, abs);
		int err = why ? 0 : kf_state_publish(s, kf_opt.state_dir);
		if (why || err)
			kf_warn("cannot publish the state in ", kf_opt.state_dir, ": ",
				why ? why : kf_os_strerror(err), "; keeping it private", NULL);
	}
	/* One page the kernel zeroes in a child: see kf_owner. */
	struct kf_owner *token = kf_os_map(kf_page);
	if (token && madvise(token, kf_page, MADV_WIPEONFORK) == 0) {
		token->owned = 1;
		token->pid = (uint32_t)getpid();
		kf_owner = token;
	} else if (token) {
		kf_os_unmap(token, kf_page);  /* old kernel: fork() is still seen by atfork */
	}

	kf_stack_init();
	kf_resolve_libc();
	if (kf_opt.check_free)
		kf_nonheap_init();
	kf_libc_exit = (kf_exit_fn *)dlsym(RTLD_NEXT, "_exit");
	kf_libc_quick_exit = (kf_exit_fn *)dlsym(RTLD_NEXT, "quick_exit");
	kf_libc_prctl = (int (*)(int, unsigned long, unsigned long, unsigned long, unsigned long))
		dlsym(RTLD_NEXT, "prctl");

	if (kf_install_fault_handler() != 0) {
		kf_warn("cannot install the SIGSEGV handler; running without detection", NULL);
		return -1;
	}
	pthread_atfork(kf_pool_lock, kf_pool_unlock, kf_atfork_child);
	on_exit(kf_on_exit, NULL);

	/* Publish the pool last: from here on free() recognises its pointers. */
	kf_pool.size = pool_size;
	kf_pool.start = (uintptr_t)pool;
	kf_free_filter_init();
	return 0;
}

int kf_init(const char *options, const char *origin)
{
	int expected = KF_START_NONE;
	if (!atomic_compare_exchange_strong(&kf_start_state, &expected, KF_START_RUNNING)) {
		while (expected == KF_START_RUNNING)  /* another thread is starting it */
			expected = atomic_load(&kf_start_state);
		return expected == KF_START_READY ? 0 : -1;
	}
	int rc;
	{
		KF_ENTER();
		rc = kf_start(options, origin);
		kf_warn_bequeath();
		atomic_store_explicit(&kf_start_state, rc == 0 ? KF_START_READY : KF_START_FAILED,
				      memory_order_release);
	}
	kf_self.countdown = 0;
	return rc;
}

__attribute__((constructor)) static void kf_constructor(void)
{
	kf_interposing = kf_detect_interposing();
	/* Loaded as a plain library (the Python module): wait for kfence_init(). */
	if (kf_interposing)
		kf_init(getenv("KFENCE_OPTIONS"), "KFENCE_OPTIONS");
}

