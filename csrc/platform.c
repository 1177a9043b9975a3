/*
 * System calls behind a small interface, so the allocator logic never calls
 * mmap or friends directly.  Everything here is async-signal-safe and never
 * allocates.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kf_internal.h"

void *kf_os_reserve(size_t size)
{
	/* NORESERVE: the pool is address space; only pages in use cost memory. */
	void *p = mmap(NULL, size, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

KF_SIGSAFE void *kf_os_map(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

KF_SIGSAFE int kf_os_map_own_page(uintptr_t addr, size_t size)
{
	/*
	 * Without MAP_NORESERVE, unlike the reservation around it: mappings with
	 * different flags never merge, so this page stays a mapping of its own.
	 */
	void *p = mmap((void *)addr, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	return p == MAP_FAILED ? -1 : 0;
}

KF_SIGSAFE int kf_os_protect(uintptr_t addr, size_t size, bool accessible)
{
	return mprotect((void *)addr, size,
			accessible ? PROT_READ | PROT_WRITE : PROT_NONE);
}

KF_SIGSAFE int kf_os_discard(uintptr_t addr, size_t size)
{
	/*
	 * Protect only: the page keeps its memory for the slot's next use, as
	 * KFENCE's pool does.  MADV_FREE here, to let the kernel take it back
	 * under pressure, was the third system call of every sampled cycle
	 * (1.2 to 2.3 us on this VM, bench/cycle_bench.py's steps), while it
	 * never lowered the RSS (freed pages count until reclaimed) nor the
	 * pool's bound of num_objects pages.
	 */
	return mprotect((void *)addr, size, PROT_NONE);
}

KF_SIGSAFE void kf_os_unmap(void *addr, size_t size)
{
	munmap(addr, size);
}

KF_SIGSAFE void kf_os_write_all(int fd, const void *data, size_t n)
{
	const char *s = data;
	int saved = errno;
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		s += w;
		n -= (size_t)w;
	}
	errno = saved;
}

KF_SIGSAFE void kf_os_block_signals(sigset_t *saved)
{
	sigset_t all;
	memset(&all, 0xff, sizeof(all));
	/* The raw system call: glibc's would leave its own two out, and ours is interposed. */
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, saved, _NSIG / 8);
}

KF_SIGSAFE void kf_os_restore_signals(const sigset_t *saved)
{
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, saved, NULL, _NSIG / 8);
}

KF_SIGSAFE uint32_t kf_os_gettid(void)
{
	return (uint32_t)syscall(SYS_gettid);
}

KF_SIGSAFE uint64_t kf_os_random64(void)
{
	uint64_t v = 0;
	int saved = errno;
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v)) {
		/* No entropy yet (early boot): mix what differs between runs. */
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		v = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^
		    ((uint64_t)getpid() << 16) ^ (uintptr_t)&v;
	}
	errno = saved;
	return v ? v : 0x9e3779b97f4a7c15ull;
}

long kf_os_max_map_count(void)
{
	char buf[32];
	long v = 65530; /* the kernel's default */
	int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return v;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		long parsed = 0;
		for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++)
			parsed = parsed * 10 + (buf[i] - '0');
		if (parsed > 0)
			v = parsed;
	}
	return v;
}

const char *kf_os_prepare_state_dir(const char *dir)
{
	struct stat st;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return kf_os_strerror(errno);
	if (lstat(dir, &st) != 0)
		return kf_os_strerror(errno);
	/* Others must not read our stacks or write our control block. */
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
		return "not a directory of this user with mode 0700";
	return NULL;
}


KF_SIGSAFE uint64_t kf_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

KF_SIGSAFE uint32_t kf_tid(void)
{
	if (KF_UNLIKELY(!kf_self.tid))
		kf_self.tid = kf_os_gettid();
	return kf_self.tid;
}

/* strerrordesc_np() is glibc 2.32's; before it, the same table was sys_errlist. */
#if !__GLIBC_PREREQ(2, 32)
#define strerrordesc_np(err) ((err) > 0 && (err) < sys_nerr ? sys_errlist[err] : NULL)
#endif

KF_SIGSAFE const char *kf_os_strerror(int err)
{
	/* glibc's table, untranslated: no locale, no allocation (strerror may do both). */
	const char *s = strerrordesc_np(err);
	return s ? s : "unknown error";
}
