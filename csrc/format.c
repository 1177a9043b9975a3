/*
 * Text: a small formatter that never allocates, the warnings, and the
 * report (the KFENCE layout: title, what happened, the access's stack, the
 * object with its allocation and free stacks).  Everything here may run in
 * the SIGSEGV handler: no allocation, no stdio, no lock.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kf_internal.h"

/* === Formatter === */

KF_SIGSAFE void kf_buf_str(struct kf_buf *b, const char *s)
{
	while (*s && b->len < b->cap)
		b->p[b->len++] = *s++;
}

KF_SIGSAFE void kf_buf_dec(struct kf_buf *b, uint64_t v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n && b->len < b->cap)
		b->p[b->len++] = tmp[--n];
}

KF_SIGSAFE void kf_buf_hex(struct kf_buf *b, uint64_t v, int width)
{
	char tmp[16];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v || n < width);
	kf_buf_str(b, "0x");
	while (n && b->len < b->cap)
		b->p[b->len++] = tmp[--n];
}

KF_SIGSAFE static void kf_buf_time(struct kf_buf *b, uint64_t ns)
{
	char frac[8];
	uint64_t us = (ns / 1000) % 1000000;
	for (int i = 5; i >= 0; i--, us /= 10)
		frac[i] = (char)('0' + us % 10);
	frac[6] = '\0';
	kf_buf_dec(b, ns / 1000000000ull);
	kf_buf_str(b, ".");
	kf_buf_str(b, frac);
	kf_buf_str(b, "s");
}

/* === Warnings === */

/*
 * Start-up warnings printed already in this process tree, by hash: read
 * from KFENCE_WARNED at start-up, and put back there when start-up printed
 * a new one, so that the processes a program execs (every child of a build,
 * every test's interpreter) do not say it again.  Forked children inherit
 * the table itself.
 */
#define KF_WARNED_MAX 16
static uint32_t kf_warned[KF_WARNED_MAX];
static _Atomic int kf_nwarned;
static bool kf_warned_new;

KF_SIGSAFE static uint32_t kf_line_hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	return h | 1;
}

/* True when line was said before in this process tree; a start-up line is remembered. */
KF_SIGSAFE static bool kf_warned_before(const char *line, size_t n)
{
	uint32_t h = kf_line_hash(line, n);
	int count = atomic_load(&kf_nwarned);
	for (int i = 0; i < count && i < KF_WARNED_MAX; i++)
		if (kf_warned[i] == h)
			return true;
	if (atomic_load(&kf_start_state) == KF_START_RUNNING && count < KF_WARNED_MAX) {
		kf_warned[count] = h;  /* start-up is one thread */
		atomic_store(&kf_nwarned, count + 1);
		kf_warned_new = true;
	}
	return false;
}

bool kf_first_in_tree(const char *what)
{
	return !kf_warned_before(what, strlen(what));
}

void kf_warn_inherit(const char *env)
{
	for (const char *s = env; s && *s && atomic_load(&kf_nwarned) < KF_WARNED_MAX;) {
		uint32_t h = 0;
		for (; (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'); s++)
			h = h * 16 + (uint32_t)(*s <= '9' ? *s - '0' : *s - 'a' + 10);
		if (h)
			kf_warned[atomic_fetch_add(&kf_nwarned, 1)] = h;
		s += *s == ',';
		if (*s && !((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			break;  /* not ours: stop */
	}
}

void kf_warn_bequeath(void)
{
	/* Only a preloaded library's children are its own; in-process (Python) it stays out. */
	if (!kf_warned_new || !kf_interposing)
		return;
	char text[KF_WARNED_MAX * 9 + 1];
	struct kf_buf b = { text, 0, sizeof(text) - 1 };
	for (int i = 0; i < atomic_load(&kf_nwarned); i++) {
		if (i)
			kf_buf_str(&b, ",");
		char hex[12];
		struct kf_buf h = { hex, 0, sizeof(hex) - 1 };
		kf_buf_hex(&h, kf_warned[i], 1);
		hex[h.len] = '\0';
		kf_buf_str(&b, hex + 2);  /* without "0x" */
	}
	text[b.len] = '\0';
	setenv("KFENCE_WARNED", text, 1);
}

KF_SIGSAFE void kf_warn(const char *first, ...)
{
	char line[768];
	struct kf_buf b = { line, 0, sizeof(line) - 1 };
	va_list ap;
	kf_buf_str(&b, "kfence: ");
	va_start(ap, first);
	for (const char *s = first; s; s = va_arg(ap, const char *))
		kf_buf_str(&b, s);
	va_end(ap);
	line[b.len++] = '\n';
	if (kf_warned_before(line, b.len))
		return;
	/* Where the reports go: under kfence-py run, to the controller, not the program's stderr. */
	int fd = kf_report_fd_open();
	kf_os_write_all(fd, line, b.len);
	kf_report_fd_close(fd);
}

/*
 * The C library or the loader, by the file name the kernel gives (the real
 * one, links resolved): libc.so.6 and ld-linux-x86-64.so.2 since glibc 2.34,
 * libc-2.31.so and ld-2.31.so before.
 */
KF_SIGSAFE static bool kf_in_libc(const char *module)
{
	const char *base = strrchr(module, '/');
	base = base ? base + 1 : module;
	return strncmp(base, "libc.so", 7) == 0 || strncmp(base, "ld-linux", 8) == 0 ||
	       (strncmp(base, "libc-", 5) == 0 && base[5] >= '0' && base[5] <= '9') ||
	       (strncmp(base, "ld-", 3) == 0 && base[3] >= '0' && base[3] <= '9');
}

KF_SIGSAFE static void kf_buf_symbol(struct kf_buf *b, const struct kf_frame *f)
{
	if (!f->sym) {
		kf_buf_str(b, "<unknown>");
		return;
	}
	kf_buf_str(b, f->sym);
	kf_buf_str(b, "+");
	kf_buf_hex(b, f->sym_off, 1);
}

/* " #i 0xpc in sym+0xoff (module+0xoff)" for every frame; the first is exact if fault_pc. */
KF_SIGSAFE static void kf_buf_stack(struct kf_buf *b, const struct kfence_stack *st, bool first_exact)
{
	if (!st->depth) {
		kf_buf_str(b, " (no stack)\n");
		return;
	}
	for (uint32_t i = 0; i < st->depth && i < KFENCE_STACK_MAX; i++) {
		struct kf_frame f;
		kf_describe(st->pc[i], first_exact && i == 0, &f);
		kf_buf_str(b, " #");
		kf_buf_dec(b, i);
		kf_buf_str(b, " ");
		kf_buf_hex(b, st->pc[i], 12);
		kf_buf_str(b, " in ");
		kf_buf_symbol(b, &f);
		kf_buf_str(b, " (");
		kf_buf_str(b, f.module);
		kf_buf_str(b, "+");
		kf_buf_hex(b, f.module_off, 1);
		kf_buf_str(b, ")\n");
	}
}

/* "<what> by thread T at 1.234567s:", the stack, and the note under it. */
KF_SIGSAFE static void kf_buf_event(struct kf_buf *b, const char *what, uint32_t tid, uint64_t ns,
				    const struct kfence_stack *st, const char *note)
{
	kf_buf_str(b, what);
	kf_buf_str(b, " by thread ");
	kf_buf_dec(b, tid);
	kf_buf_str(b, " at ");
	kf_buf_time(b, ns);
	kf_buf_str(b, ":\n");
	kf_buf_stack(b, st, false);
	kf_buf_str(b, note);
}

KF_SIGSAFE static void kf_buf_object(struct kf_buf *b, long slot, const struct kfence_slot *m)
{
	kf_buf_str(b, "kfence-#");
	kf_buf_dec(b, (uint64_t)slot);
	kf_buf_str(b, ": ");
	kf_buf_hex(b, m->addr, 12);
	kf_buf_str(b, "-");
	kf_buf_hex(b, m->addr + (m->size ? m->size - 1 : 0), 12);
	kf_buf_str(b, ", size=");
	kf_buf_dec(b, m->size);
	kf_buf_str(b, ", cache=");
	kf_buf_str(b, kfence_cache_name((int)m->cache) ? kfence_cache_name((int)m->cache) : "?");
	kf_buf_str(b, "\n\n");
	kf_buf_event(b, "allocated", m->alloc_tid, m->alloc_ns, &m->alloc_stack, m->alloc_note);
	if (m->free_tid) {
		kf_buf_str(b, "\n");
		kf_buf_event(b, "freed", m->free_tid, m->free_ns, &m->free_stack, m->free_note);
	}
}

/* A kind with an access made a read or a write (a fault never says which: read). */
KF_SIGSAFE static const char *kf_access_name(int access)
{
	return kfence_access_name(access == KFENCE_ACCESS_WRITE ? access : KFENCE_ACCESS_READ);
}

/* "Out-of-bounds read at 0x... (3B right of kfence-#7):" and its kin. */
KF_SIGSAFE static void kf_buf_what(struct kf_buf *b, const struct kf_report_in *in)
{
	const struct kfence_bug_desc *bug = kfence_bug_desc(in->kind);
	kf_buf_str(b, bug->headline);
	if (bug->with_access) {
		kf_buf_str(b, kf_access_name(in->access));
		kf_buf_str(b, " at ");
	}
	kf_buf_hex(b, in->addr, 12);
	if (in->kind == KFENCE_BUG_CORRUPTION) {
		kf_buf_str(b, " [");
		for (int i = 0; i < KFENCE_CORRUPTION_WINDOW; i++) {
			kf_buf_str(b, " ");
			if (in->corrupted_mask & (1u << i))
				kf_buf_hex(b, in->corrupted[i], 2);
			else
				kf_buf_str(b, ".");
		}
		kf_buf_str(b, " ]");
	}
	if (in->slot >= 0) {
		kf_buf_str(b, " (");
		if (in->kind == KFENCE_BUG_OOB || in->detail == KFENCE_DETAIL_GUARD) {
			kf_buf_dec(b, (uint64_t)(in->distance < 0 ? -in->distance : in->distance));
			kf_buf_str(b, in->distance < 0 ? "B left of " : "B right of ");
		} else {
			kf_buf_str(b, "in ");
		}
		kf_buf_str(b, "kfence-#");
		kf_buf_dec(b, (uint64_t)in->slot);
		kf_buf_str(b, ")");
	}
	kf_buf_str(b, ":\n");
}

/*
 * The detail's sentence (kfence_state.h), its fields filled, on a line of
 * its own; nothing for NONE.  m is the object, if any.
 */
KF_SIGSAFE static void kf_buf_detail(struct kf_buf *b, const struct kf_report_in *in,
				     const struct kfence_slot *m)
{
	const struct kfence_detail_desc *d = kfence_detail_desc(in->detail);
	if (!d || !d->text[0])
		return;
	const struct kfence_family_desc *alloc =
		kfence_family_desc(m ? kfence_cache_family((int)m->cache) : -1);
	const struct kfence_family_desc *dealloc = kfence_family_desc(in->dealloc);
	for (const char *t = d->text; *t;) {
		const char *end = *t == '{' ? strchr(t, '}') : NULL;
		if (!end) {
			char c[2] = { *t++, '\0' };
			kf_buf_str(b, c);
			continue;
		}
		size_t n = (size_t)(end - t - 1);
		if (n == 9 && !strncmp(t + 1, "allocator", n)) {
			kf_buf_str(b, alloc ? alloc->allocator : "?");
		} else if (n == 11 && !strncmp(t + 1, "deallocator", n)) {
			kf_buf_str(b, dealloc ? dealloc->deallocator : "?");
		} else if (n == 5 && !strncmp(t + 1, "value", n)) {
			kf_buf_dec(b, in->value);
		} else if (n == 4 && !strncmp(t + 1, "size", n)) {
			kf_buf_dec(b, m ? m->size : 0);
		} else if (n == 6 && !strncmp(t + 1, "module", n)) {
			struct kf_frame f;
			kf_describe((uintptr_t)in->value, true, &f);
			kf_buf_str(b, f.module);
		}
		t = end + 1;
	}
	kf_buf_str(b, "\n");
}

/* Every address the report will name, for one pass over the process's modules. */
KF_SIGSAFE static void kf_want_stack(const struct kfence_stack *st, bool first_exact)
{
	for (uint32_t i = 0; i < st->depth && i < KFENCE_STACK_MAX; i++)
		kf_symbols_want(st->pc[i], first_exact && i == 0);
}

KF_SIGSAFE size_t kf_format_report(const struct kf_report_in *in, const struct kfence_slot *m, char *out,
			size_t cap)
{
	/* The rule that ends the report always fits. */
	struct kf_buf b = { out, 0, cap - sizeof(KF_REPORT_RULE) };
	const struct kfence_bug_desc *bug = kfence_bug_desc(in->kind);
	bool exact = in->fault_pc != 0;
	/* A leak, or a corruption a sweep found: no code is at fault, the allocation is named. */
	bool at_alloc = (in->kind == KFENCE_BUG_LEAK || in->detail == KFENCE_DETAIL_SWEEP) && m;
	const struct kfence_stack *where = at_alloc ? &m->alloc_stack : in->stack;
	kf_symbols_begin();
	kf_want_stack(in->stack, exact);
	if (in->detail >= KFENCE_DETAIL_TEXT && in->detail <= KFENCE_DETAIL_BSS)
		kf_symbols_want((uintptr_t)in->value, true);  /* the module's code ({module}) */
	if (m) {
		kf_want_stack(&m->alloc_stack, false);
		kf_want_stack(&m->free_stack, false);
	}
	kf_symbols_load();

	kf_buf_str(&b, KF_REPORT_RULE KF_REPORT_TITLE);
	kf_buf_str(&b, bug->name);
	if (bug->with_access) {
		kf_buf_str(&b, " ");
		kf_buf_str(&b, kf_access_name(in->access));
	}
	kf_buf_str(&b, " in ");
	if (where->depth) {
		bool where_exact = where == in->stack && exact;
		struct kf_frame f;
		kf_describe(where->pc[0], where_exact, &f);
		/*
		 * Name the code that made the access, not the C library routine it
		 * called (memset, memcpy, strcpy...): the first frame outside libc.
		 */
		for (uint32_t i = 1; i < where->depth && kf_in_libc(f.module); i++)
			kf_describe(where->pc[i], false, &f);
		if (kf_in_libc(f.module))
			kf_describe(where->pc[0], where_exact, &f);
		kf_buf_symbol(&b, &f);
	} else {
		kf_buf_str(&b, "<unknown>");
	}
	kf_buf_str(&b, "\n\n");
	kf_buf_what(&b, in);
	kf_buf_detail(&b, in, m);
	if (!at_alloc)
		kf_buf_stack(&b, in->stack, exact);
	if (!at_alloc || in->detail)
		kf_buf_str(&b, "\n");
	if (m)
		kf_buf_object(&b, in->slot, m);
	kf_buf_str(&b, "\npid ");
	kf_buf_dec(&b, (uint64_t)getpid());
	kf_buf_str(&b, ", thread ");
	kf_buf_dec(&b, kf_tid());
	kf_buf_str(&b, "\n");
	b.cap = cap;
	kf_buf_str(&b, KF_REPORT_RULE);
	kf_symbols_end();
	return b.len;
}

KF_SIGSAFE size_t kf_format_fallback(const struct kf_report_in *in, char *out, size_t cap)
{
	struct kf_buf b = { out, 0, cap - 1 };
	kf_buf_str(&b, "kfence: " KF_REPORT_TITLE);
	kf_buf_str(&b, kfence_bug_desc(in->kind)->name);
	kf_buf_str(&b, " at ");
	kf_buf_hex(&b, in->addr, 12);
	kf_buf_str(&b, " in pid ");
	kf_buf_dec(&b, (uint64_t)getpid());
	kf_buf_str(&b, " (full report not printed: another report is being written)");
	out[b.len++] = '\n';
	return b.len;
}
