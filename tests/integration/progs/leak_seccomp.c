/*
 * leak_check where reading our own memory is refused, as container runtimes'
 * seccomp profiles used to: argv[1] lists the system calls to refuse
 * ("process_vm_readv", "pread64", "openat", comma separated), argv[2] the
 * errno ("EPERM" or "ENOSYS").  One object stays referenced from a global,
 * one is dropped: only the second is a leak.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "kftest.h"

static void *kept;

NOINLINE static char *alloc_buffer(size_t n)
{
	return malloc(n);
}

NOINLINE static void make_leak(void)
{
	char *p = alloc_buffer(48);
	memset(p, 1, 48);
}

static void refuse(const char *names, int err)
{
	struct sock_filter f[16];
	int n = 0;
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	static const struct { const char *name; int nr; } calls[] = {
		{ "process_vm_readv", SYS_process_vm_readv }, { "pread64", SYS_pread64 },
		{ "openat", SYS_openat },
	};
	for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
		if (!strstr(names, calls[i].name))
			continue;
		f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)calls[i].nr, 0, 1);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err);
	}
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = { (unsigned short)n, f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
		perror("seccomp");
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 1;
	make_leak();
	kept = alloc_buffer(64);  /* referenced from a global: not a leak */
	printf("guarded %d %d\n", kf_test_guarded(kept), kf_test_state() != NULL);
	fflush(stdout);
	refuse(argv[1], strcmp(argv[2], "ENOSYS") == 0 ? ENOSYS : EPERM);
	return 0;
}
