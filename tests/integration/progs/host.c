/*
 * Correct programs (and one bug) that preloaded tools have broken: a JIT's
 * registered unwind frames, raw clone(), exits that skip exit handlers,
 * fork with a state file.  argv[1] names the scenario.
 */
#include "kftest.h"

#include <execinfo.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <link.h>
#include <stddef.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern void __register_frame_info(const void *begin, void *object);
extern void *__deregister_frame_info(const void *begin);

static const void *eh_frame;

/* The executable's .eh_frame, found through its PT_GNU_EH_FRAME header. */
static int find_eh_frame(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		if (info->dlpi_phdr[i].p_type != PT_GNU_EH_FRAME)
			continue;
		const unsigned char *hdr =
			(const unsigned char *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
		int32_t rel;
		memcpy(&rel, hdr + 4, 4); /* eh_frame_ptr, encoded pc-relative sdata4 */
		eh_frame = hdr + 4 + rel;
		return 1;
	}
	return 0;
}

/* What LLVM-based JITs do: register frames with libgcc, then unwind (backtrace, throw). */
static int jit_unwind(void)
{
	static long object[16]; /* libgcc's struct object, opaque */
	dl_iterate_phdr(find_eh_frame, NULL);
	if (!eh_frame)
		return 2;
	__register_frame_info(eh_frame, object);
	void *pcs[32];
	int depth = 0;
	for (int i = 0; i < 200; i++) {
		depth = backtrace(pcs, 32);
		free(malloc(16 + (size_t)i));
	}
	__deregister_frame_info(eh_frame);
	printf("depth %d\n", depth);
	return depth > 1 ? 0 : 1;
}

/* A child made with the raw system call runs no atfork handler; both free what they hold. */
static int raw_clone(void)
{
	enum { N = 64 };
	char *objs[N];
	for (int i = 0; i < N; i++) {
		objs[i] = malloc(32);
		memset(objs[i], i, 32);
	}
	long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
	if (pid < 0)
		return 2;
	for (int i = 0; i < N; i++)
		free(objs[i]);
	for (int i = 0; i < N; i++)  /* and allocate anew, in both */
		free(malloc(48));
	if (pid == 0)
		_exit(0);
	int status;
	waitpid((pid_t)pid, &status, 0);
	printf("child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return 0;
}

/* An out-of-bounds write on a right-placed object, then one way or another out. */
static NOINLINE void overflow(void)
{
	char *volatile p = malloc(16);
	p[16] = 'x';
	free(p);
}

static int exits(const char *how)
{
	overflow();
	fflush(stdout);
	if (!strcmp(how, "_exit"))
		_exit(0);
	if (!strcmp(how, "_Exit"))
		_Exit(0);
	if (!strcmp(how, "quick_exit"))
		quick_exit(0);
	if (!strcmp(how, "vfork")) {  /* a vfork child shares its buggy parent's state */
		pid_t pid = vfork();
		if (pid == 0)
			_exit(0);
		int status;
		waitpid(pid, &status, 0);
		printf("child status %d\n", WEXITSTATUS(status));
		fflush(stdout);
		_exit(0);
	}
	return 0;
}

/*
 * Fork with live objects: the child stops until the test has looked at its
 * state file, frees what it inherited (no report: they are its own), and
 * exits 0 although its parent reported a bug.
 */
static int fork_state(const char *fifo)
{
	enum { N = 8 };
	char *objs[N];
	for (int i = 0; i < N; i++)
		objs[i] = malloc(64);
	overflow();
	pid_t pid = fork();
	if (pid == 0) {
		printf("child %d\n", (int)getpid());
		fflush(stdout);
		char c;
		FILE *f = fopen(fifo, "r");  /* the test opens it for writing when done */
		if (f) {
			c = (char)fgetc(f);
			(void)c;
			fclose(f);
		}
		for (int i = 0; i < N; i++)
			free(objs[i]);
		exit(0);
	}
	for (int i = 0; i < N; i++)
		free(objs[i]);
	int status;
	waitpid(pid, &status, 0);
	printf("child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return 0;
}

/* n forks whose children allocate once and exit, as a shell's $(...) does. */
static int forks(int n)
{
	for (int i = 0; i < n; i++) {
		free(malloc(24));
		pid_t pid = fork();
		if (pid == 0) {
			free(malloc(24));
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
	return 0;
}

/* A child that allocates n objects (its state file grows slot by slot), then exits. */
static int fork_alloc(int n)
{
	pid_t pid = fork();
	if (pid == 0) {
		for (int i = 0; i < n; i++)
			free(malloc(64));
		puts("child ok");
		exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return 0;
}

/*
 * Every object referenced only from tables the program mapped itself: the
 * kernel may merge them with the library's own anonymous memory into one
 * line of /proc/self/maps, which the leak scan must still read.
 */
static int mapped_tables(void)
{
	for (int pages = 1; pages <= 16; pages++) {
		void **table = mmap(NULL, (size_t)pages * 4096, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (table == MAP_FAILED)
			return 2;
		table[0] = malloc(24);
	}
	return 0;
}

/*
 * A forked worker sandboxes itself, as sshd's and browsers' do: after
 * seccomp, opening a file or growing one kills the process (SIGSYS).  Then
 * it allocates, and frees what it inherited.
 */
static int sandboxed_child(void)
{
	char *inherited = malloc(40);
	pid_t pid = fork();
	if (pid == 0) {
		struct sock_filter filter[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, 3, 0),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_open, 2, 0),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_fallocate, 1, 0),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		};
		struct sock_fprog prog = { sizeof(filter) / sizeof(filter[0]), filter };
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			_exit(3);
		for (int i = 0; i < 100; i++)
			free(malloc(32));
		free(inherited);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	free(inherited);
	if (WIFSIGNALED(status))
		printf("child killed by signal %d\n", WTERMSIG(status));
	else
		printf("child status %d\n", WEXITSTATUS(status));
	return 0;
}

/*
 * rounds times: fork with 64 live objects, and parent and child each free
 * their own copies at once (the child copies its state while the parent
 * changes the same slots).  Prints how many children did not exit 0.
 */
static int fork_free(int rounds)
{
	enum { N = 64 };
	int bad = 0;
	for (int r = 0; r < rounds; r++) {
		char *objs[N];
		for (int i = 0; i < N; i++)
			objs[i] = malloc(32);
		pid_t pid = fork();
		for (int i = 0; i < N; i++)
			free(objs[i]);
		if (pid == 0)
			_exit(0);
		int status;
		waitpid(pid, &status, 0);
		bad += !WIFEXITED(status) || WEXITSTATUS(status);
	}
	printf("bad children %d\n", bad);
	return 0;
}

static char *volatile timer_objs[2000];
static volatile int timer_next;

static void free_on_timer(int sig)
{
	(void)sig;
	if (timer_next < 2000)
		free(timer_objs[timer_next++]);
}

/* A child whose timer handler frees inherited objects while it takes its state. */
static int signal_during_adoption(void)
{
	for (int i = 0; i < 2000; i++)
		timer_objs[i] = malloc(32);
	pid_t pid = fork();
	if (pid == 0) {
		alarm(20);  /* a hung child dies of SIGALRM */
		signal(SIGPROF, free_on_timer);
		struct itimerval it = { { 0, 100 }, { 0, 100 } }, off = { { 0, 0 }, { 0, 0 } };
		setitimer(ITIMER_PROF, &it, NULL);
		free(malloc(16));  /* the first slow path: takes the state */
		setitimer(ITIMER_PROF, &off, NULL);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("child status %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "";
	if (!strcmp(what, "jit"))
		return jit_unwind();
	if (!strcmp(what, "clone"))
		return raw_clone();
	if (!strcmp(what, "exit") && argc > 2)
		return exits(argv[2]);
	if (!strcmp(what, "fork") && argc > 2)
		return fork_state(argv[2]);
	if (!strcmp(what, "forks") && argc > 2)
		return forks(atoi(argv[2]));
	if (!strcmp(what, "fork_free") && argc > 2)
		return fork_free(atoi(argv[2]));
	if (!strcmp(what, "timer"))
		return signal_during_adoption();
	if (!strcmp(what, "sandbox"))
		return sandboxed_child();
	if (!strcmp(what, "tables"))
		return mapped_tables();
	if (!strcmp(what, "fork_alloc") && argc > 2)
		return fork_alloc(atoi(argv[2]));
	if (!strcmp(what, "hello")) {
		for (int i = 0; i < 100; i++)
			free(malloc(100));
		puts("hello");
		return 0;
	}
	return 2;
}
