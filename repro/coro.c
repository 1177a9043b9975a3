/* Coroutines on malloc'd, mmap'd and main-stack (local array) stacks, freeing heap memory; sigaltstack handler freeing. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
static ucontext_t main_ctx, co_ctx;
static void *ptrs[64];
static void co(void) {
	for (int round = 0; round < 50; round++) {
		for (int i = 0; i < 64; i++) { free(ptrs[i]); ptrs[i] = malloc(16 + i * 40); }
		char *big = malloc(200000);  /* mmapped chunk */
		free(big);
		swapcontext(&co_ctx, &main_ctx);
	}
}
static void run_on(void *stack, size_t size) {
	getcontext(&co_ctx);
	co_ctx.uc_stack.ss_sp = stack;
	co_ctx.uc_stack.ss_size = size;
	co_ctx.uc_link = &main_ctx;
	makecontext(&co_ctx, co, 0);
	for (int r = 0; r < 51; r++) swapcontext(&main_ctx, &co_ctx);
}
static void handler(int s) { (void)s; for (int i = 0; i < 8; i++) { free(ptrs[i]); ptrs[i] = malloc(24); } }
static void inner(void) {
	char local_stack[128 * 1024] __attribute__((aligned(16)));
	run_on(local_stack, sizeof(local_stack));
}
int main(void) {
	for (int i = 0; i < 64; i++) ptrs[i] = malloc(32);
	run_on(malloc(256 * 1024), 256 * 1024);
	run_on(mmap(NULL, 256 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), 256 * 1024);
	inner();
	stack_t ss = { .ss_sp = malloc(SIGSTKSZ * 4), .ss_size = SIGSTKSZ * 4 };
	sigaltstack(&ss, NULL);
	struct sigaction sa = { .sa_handler = handler, .sa_flags = SA_ONSTACK };
	sigaction(SIGUSR1, &sa, NULL);
	for (int i = 0; i < 100; i++) raise(SIGUSR1);
	for (int i = 0; i < 64; i++) free(ptrs[i]);
	puts("ok");
	return 0;
}
