/*
 * kfence_py._pyext: the two things the Python package needs that cffi cannot
 * express, kept apart from libkfence.so (which has no Python in it):
 *
 *  - GuardedBufferBase, a type with the buffer protocol over one guarded
 *    object, which counts its exports so that free() refuses while a
 *    memoryview or array still uses the memory, and any Python-level use
 *    after free() raises instead of faulting;
 *  - hooks on CPython's allocator domains (PyMem_SetAllocator) that send a
 *    sample of allocations to the pool, recording the Python traceback of
 *    sampled objects at allocation and at free.
 *
 * It links the same libkfence.so as the cffi module: one pool per process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#include "kfence.h"

/* The interpreter's frames, read by kf_python_where (3.11 on: only the internal header has them). */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#elif PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif

/* === Guarded buffers === */

typedef struct {
	PyObject_HEAD
	char *ptr;            /* NULL once freed */
	Py_ssize_t size;
	Py_ssize_t exports;   /* live buffer views */
	PyObject *weakrefs;
} GuardedBuffer;

static int gb_check(GuardedBuffer *self)
{
	if (!self->ptr) {
		PyErr_SetString(PyExc_ValueError, "operation on a freed GuardedBuffer");
		return -1;
	}
	return 0;
}

static int gb_getbuffer(GuardedBuffer *self, Py_buffer *view, int flags)
{
	if (gb_check(self) < 0) {
		view->obj = NULL;
		return -1;
	}
	if (PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->size, 0, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void gb_releasebuffer(GuardedBuffer *self, Py_buffer *view)
{
	(void)view;
	self->exports--;
}

static PyBufferProcs gb_as_buffer = {
	(getbufferproc)gb_getbuffer,
	(releasebufferproc)gb_releasebuffer,
};

static PyObject *gb_free(GuardedBuffer *self, PyObject *unused)
{
	(void)unused;
	if (gb_check(self) < 0)
		return NULL;
	if (self->exports) {
		PyErr_Format(PyExc_BufferError,
			     "cannot free a GuardedBuffer while %zd exported view(s) "
			     "(memoryview, array, ctypes or cffi object) still use it",
			     self->exports);
		return NULL;
	}
	char *p = self->ptr;
	self->ptr = NULL;
	kfence_free(p);
	Py_RETURN_NONE;
}

static void gb_dealloc(GuardedBuffer *self)
{
	if (self->weakrefs)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (self->ptr)
		kfence_free(self->ptr);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *gb_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = { "size", "placement", "align", "zero", NULL };
	Py_ssize_t size;
	int placement = 2, zero = 1;
	Py_ssize_t align = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|inp", kwlist, &size, &placement,
					 &align, &zero))
		return NULL;
	if (size <= 0 || align < 0) {
		PyErr_SetString(PyExc_ValueError, "size must be positive and align not negative");
		return NULL;
	}
	GuardedBuffer *self = (GuardedBuffer *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	errno = 0;
	self->ptr = kfence_alloc((size_t)size, (size_t)align, placement, zero, KFENCE_CACHE_API);
	if (!self->ptr) {
		PyErr_SetFromErrno(PyExc_OSError);
		Py_DECREF(self);
		return NULL;
	}
	self->size = size;
	return (PyObject *)self;
}

static PyObject *gb_address(GuardedBuffer *self, void *closure)
{
	(void)closure;
	if (gb_check(self) < 0)
		return NULL;
	return PyLong_FromVoidPtr(self->ptr);
}

static PyObject *gb_size(GuardedBuffer *self, void *closure)
{
	(void)closure;
	return PyLong_FromSsize_t(self->size);
}

static PyObject *gb_freed(GuardedBuffer *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->ptr == NULL);
}

static PyObject *gb_exports(GuardedBuffer *self, void *closure)
{
	(void)closure;
	return PyLong_FromSsize_t(self->exports);
}

static Py_ssize_t gb_len(GuardedBuffer *self)
{
	return self->size;
}

static PyMethodDef gb_methods[] = {
	{ "free", (PyCFunction)gb_free, METH_NOARGS,
	  "Free the object; later accesses through its address are reported." },
	{ NULL, NULL, 0, NULL },
};

static PyGetSetDef gb_getset[] = {
	{ "address", (getter)gb_address, NULL, "Address of the first byte.", NULL },
	{ "size", (getter)gb_size, NULL, "Size in bytes.", NULL },
	{ "freed", (getter)gb_freed, NULL, "True once free() was called.", NULL },
	{ "exports", (getter)gb_exports, NULL, "Buffer views still alive.", NULL },
	{ NULL, NULL, NULL, NULL, NULL },
};

static PySequenceMethods gb_as_sequence = { .sq_length = (lenfunc)gb_len };

static PyTypeObject GuardedBufferType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "kfence_py._pyext.GuardedBufferBase",
	.tp_basicsize = sizeof(GuardedBuffer),
	.tp_dealloc = (destructor)gb_dealloc,
	.tp_as_buffer = &gb_as_buffer,
	.tp_as_sequence = &gb_as_sequence,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
	.tp_doc = "One guarded object with the buffer protocol.",
	.tp_methods = gb_methods,
	.tp_getset = gb_getset,
	.tp_new = gb_new,
	.tp_weaklistoffset = offsetof(GuardedBuffer, weakrefs),
};

/* === CPython allocator hooks === */

/*
 * Who owns a pool object matters more than anything else here: one that
 * reaches an allocator other than ours is freed by glibc (abort) when
 * libkfence.so is not the process's malloc.  Our hooks sit above the
 * allocator they found (kf_dom[d].prev) and pool objects only come back to us
 * while they stay in the chain.  A tool installed after us that later restores
 * the allocator it found puts ours back: safe.  A tool installed before us that
 * restores the allocator it saved removes ours: tracemalloc does exactly that,
 * so the Python side restarts it above us before calling install (api.py),
 * and refuses to hook in-process over an allocator that is not CPython's own
 * (python_allocator_name()).  What is left, a removal by some other tool, is
 * seen on the sampled path (no sample while it lasts) and repaired from
 * Python (repair_python_hooks()); frees in between are not covered.
 *
 * Every PyMem call of the process goes through these hooks, so their fast
 * path is the whole cost of python_allocator=True at default sampling: a
 * decrement and a branch (malloc, calloc) or a subtraction and a compare
 * (free, realloc), then a tail call to the allocator below, with no stack
 * frame, no call into libkfence.so and no TLS lookup in MEM and OBJ.  All
 * else is in cold functions.  Measured with callgrind: 7 instructions added
 * per call, where the first version added 30 per malloc (the sampled path
 * inlined into it pushed six registers and a 104-byte frame on every call) and
 * 21 + 6 per free (a PLT call to kfence_is_pool_address); bench/py_bench.py.
 */

/* One per domain, the ctx of our hooks there: the fast path needs nothing else. */
struct kf_domain {
	PyMemAllocatorEx prev;  /* the allocator below us */
	PyMemAllocatorEx hook;  /* ours, as installed (ctx: this record) */
	int domain;             /* PYMEM_DOMAIN_* */
	/*
	 * MEM and OBJ: a layer below us may hand out blocks inside a RAW-domain
	 * pool object of ours (CPython's debug hooks put their header in front of
	 * a block pymalloc took from PyMem_RawMalloc).  Such a pointer is that
	 * layer's, not ours: only the recorded start of a pool object is.  1 when
	 * the allocator below has a context, as the debug hooks do (pymalloc and
	 * malloc have none).
	 */
	int pass_down;
};
static struct kf_domain kf_dom[3];       /* RAW, MEM, OBJ */
static int kf_hooked;                     /* hooks installed (they stay: see install) */
static volatile int kf_sampling;          /* send samples to the pool */

/*
 * The sampling countdowns, each one less than gate.c's countdown (which asks
 * the gate when it reaches 0): the fast path decrements ours in memory and
 * branches on the sign, two instructions; kf_alloc_slow converts.  MEM and
 * OBJ are only called with the GIL held (CPython's rule for PyMem_Malloc and
 * PyObject_Malloc), and every interpreter of CPython 3.11 shares that one GIL:
 * one plain process-wide counter.  A build whose interpreters each have their
 * own GIL (3.12+) may decrement it from two threads at once; a lost decrement
 * only moves the next look at the gate, which decides under its own atomics.
 * RAW is called without the GIL (PyMem_RawMalloc is thread-safe): a
 * per-thread counter, initial-exec so that no __tls_get_addr call is made in
 * this dlopen()ed module.  -1 is gate.c's 0: "ask at the next call".
 */
static int32_t kf_gil_countdown = -1;
static _Thread_local int32_t kf_raw_countdown __attribute__((tls_model("initial-exec"))) = -1;
static _Thread_local int kf_in_hook __attribute__((tls_model("initial-exec"))); /* the traceback capture allocates */

/* Calls between two looks at kf_sampling while it is off. */
#define KF_OFF_PERIOD 4096
/* Calls between two looks at the domains while some domain lost our hooks. */
#define KF_LOST_PERIOD 256

/*
 * The pool's addresses, tested on every free and realloc instead of a call
 * to kfence_is_pool_address().  Copied from the state once the pool exists:
 * at install, or at the latest with the first object we hand out, as the
 * pool never moves once a pointer into it exists.  Read without atomics, as
 * libkfence.so reads its own copy (kf_pool): a thread that frees one of our
 * objects got it after the copy was written (by the thread that sampled it,
 * or through whatever passed the pointer on), so it sees the copy.  A racing
 * reader may see start without size (nothing matches) or size without start
 * (too much matches): the exact test (kf_owns) follows every match.
 */
static struct {
	uintptr_t start;
	uintptr_t size;
} kf_pool_filter;

static inline int kf_in_pool(const void *ptr)
{
	return (uintptr_t)ptr - kf_pool_filter.start < kf_pool_filter.size;
}

static void kf_pool_filter_set(void)
{
	const struct kfence_state *s = kfence_state();
	if (__atomic_load_n(&kf_pool_filter.size, __ATOMIC_RELAXED) || !s || !s->pool_size)
		return;
	__atomic_store_n(&kf_pool_filter.start, (uintptr_t)s->pool_start, __ATOMIC_RELAXED);
	__atomic_store_n(&kf_pool_filter.size, (uintptr_t)s->pool_size, __ATOMIC_RELEASE);
}

#define KF_NOTE_SIZE 512

/*
 * " Python traceback (most recent call first):\n  File ..., line N, in f\n"
 * into out.  Only with the GIL held (MEM and OBJ domains).  Frames are read
 * with the public API, which may allocate (we pass those to the previous
 * allocator) and must not start a garbage collection in the middle of the
 * allocation that called us: the GC is paused and the error state kept.
 */
static void kf_python_traceback(char *out, size_t cap)
{
	out[0] = '\0';
	PyThreadState *ts = PyGILState_GetThisThreadState();
	if (!ts || !Py_IsInitialized())
		return;
	PyObject *type, *value, *tb;
	PyErr_Fetch(&type, &value, &tb);
	int gc_was_enabled = PyGC_Disable();
	int n = snprintf(out, cap, " Python traceback (most recent call first):\n");
	size_t header = n > 0 ? (size_t)n : 0, len = header;
	PyFrameObject *frame = PyThreadState_GetFrame(ts);
	while (frame && len + 1 < cap) {
		PyCodeObject *code = PyFrame_GetCode(frame);
		const char *file = PyUnicode_AsUTF8(code->co_filename);
		const char *name = PyUnicode_AsUTF8(code->co_name);
		n = snprintf(out + len, cap - len, "  File \"%s\", line %d, in %s\n",
			     file ? file : "?", PyFrame_GetLineNumber(frame), name ? name : "?");
		Py_DECREF(code);
		if (n < 0 || (size_t)n >= cap - len) {
			out[len] = '\0';  /* keep whole lines only */
			break;
		}
		len += (size_t)n;
		PyFrameObject *back = PyFrame_GetBack(frame);
		Py_DECREF(frame);
		frame = back;
	}
	Py_XDECREF(frame);
	if (len == header)
		out[0] = '\0';  /* no Python frame: nothing worth printing */
	if (gc_was_enabled)
		PyGC_Enable();
	PyErr_Clear();
	PyErr_Restore(type, value, tb);
}

static void kf_note(void *ptr, int which, int domain)
{
	if (domain == PYMEM_DOMAIN_RAW)
		return;  /* no GIL guaranteed: no traceback */
	char note[KF_NOTE_SIZE];
	kf_in_hook = 1;
	kf_python_traceback(note, sizeof(note));
	kf_in_hook = 0;
	if (note[0])
		kfence_annotate(ptr, which, note);
}

/*
 * Whether ptr, a pool address (kf_in_pool) freed or reallocated through our
 * hook of a domain, is ours: any pool address in RAW (nothing below it
 * allocates from us), only the start of one of our objects in MEM and OBJ
 * when the layer below may embed (see pass_down).
 */
static int kf_owns(const struct kf_domain *dd, void *ptr)
{
	return kfence_is_pool_address(ptr) && (!dd->pass_down || kfence_is_object_start(ptr));
}

static const PyMemAllocatorDomain kf_domains[3] = {
	PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ };

/* The object file holding code address fn, or NULL. */
static const void *kf_image_of(const void *fn)
{
	Dl_info info;
	return fn && dladdr(fn, &info) ? info.dli_fbase : NULL;
}

static const void *kf_cpython_image;      /* libpython or the executable; set at install */

/*
 * 1 when domain d no longer goes through our hooks, as far as can be told:
 * it holds again exactly the allocator we wrapped, or one of CPython's leaf
 * allocators (pymalloc or malloc: no context, calling nothing above them).
 * Another tool's hooks on top are taken to wrap ours: they cannot be seen
 * through.  The current allocator goes to *cur.
 */
static int kf_domain_lost(int d, PyMemAllocatorEx *cur)
{
	PyMem_GetAllocator(kf_domains[d], cur);
	if (cur->malloc == kf_dom[d].hook.malloc)
		return 0;
	if (memcmp(cur, &kf_dom[d].prev, sizeof(*cur)) == 0)
		return 1;
	return cur->ctx == NULL && kf_image_of((const void *)cur->malloc) == kf_cpython_image;
}

/*
 * Where Python allocates, for the covered-site filter (coverage.c): the
 * address of the innermost frame's current bytecode instruction, one value
 * per instruction of each code object (3.9 and 3.10: the code object and the
 * instruction's offset, mixed).  Read from the interpreter's own structures,
 * as the public API would make a frame object (an allocation) to say it.
 * Only with the GIL held (MEM and OBJ); 0 with no Python frame, and on a
 * version whose frames this was not written for (its objects then have no
 * site and are never skipped as covered).
 */
static uintptr_t kf_python_where(void)
{
	PyThreadState *ts = _PyThreadState_UncheckedGet();
	if (!ts)
		return 0;
#if PY_VERSION_HEX >= 0x030E0000
	return 0;
#elif PY_VERSION_HEX >= 0x030D0000
	const _PyInterpreterFrame *f = ts->current_frame;
	return f ? (uintptr_t)f->instr_ptr : 0;
#elif PY_VERSION_HEX >= 0x030B0000
	const _PyInterpreterFrame *f = ts->cframe ? ts->cframe->current_frame : NULL;
	return f ? (uintptr_t)f->prev_instr : 0;
#else
	const PyFrameObject *f = ts->frame;
	return f ? (uintptr_t)f->f_code ^ ((uintptr_t)f->f_lasti << 48) : 0;
#endif
}

static void *kf_hook_alloc(struct kf_domain *dd, int32_t *countdown, size_t size, int zero)
{
	/*
	 * While a tool has our hooks out of some domain, an object from here
	 * could be freed without them (PyObject_Free ends in PyMem_RawFree).  No
	 * sample then; the Python side warns and repairs (repair_python_hooks).
	 * CPython itself swaps RAW to its default for a moment in a few init and
	 * exit paths: sampling resumes after them.
	 */
	PyMemAllocatorEx cur;
	if (kf_domain_lost(0, &cur) || kf_domain_lost(1, &cur) || kf_domain_lost(2, &cur)) {
		*countdown = KF_LOST_PERIOD;
		return NULL;
	}
	/* pymalloc's alignment guarantee is 16 bytes: ask for it whatever `align` says. */
	int32_t gate = *countdown + 1;
	uintptr_t where = dd->domain == PYMEM_DOMAIN_RAW ? 0 : kf_python_where();
	void *p = kfence_sample(&gate, size, 16, KFENCE_CACHE_PYMEM, zero, where);
	*countdown = gate - 1;
	if (p) {
		kf_pool_filter_set();  /* before anyone can free p */
		kf_note(p, 0, dd->domain);
	}
	return p;
}

/*
 * A countdown of malloc (nelem 1) or calloc (zero) went below 0: sample, or
 * pass the call down.
 */
static __attribute__((noinline, cold)) void *
kf_alloc_slow(struct kf_domain *dd, int32_t *countdown, size_t nelem, size_t elsize, int zero)
{
	size_t size;
	if (!kf_sampling) {
		*countdown = KF_OFF_PERIOD;  /* set_python_sampling() starts it again */
	} else if (!kf_in_hook && !__builtin_mul_overflow(nelem, elsize, &size)) {
		void *p = kf_hook_alloc(dd, countdown, size, zero);
		if (p)
			return p;
	}
	if (zero)
		return dd->prev.calloc(dd->prev.ctx, nelem, elsize);
	return dd->prev.malloc(dd->prev.ctx, elsize);
}

#define KF_UNLIKELY(x) __builtin_expect(!!(x), 0)

static void *kf_gil_malloc(void *ctx, size_t size)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(--kf_gil_countdown < 0))
		return kf_alloc_slow(dd, &kf_gil_countdown, 1, size, 0);
	return dd->prev.malloc(dd->prev.ctx, size);
}

static void *kf_gil_calloc(void *ctx, size_t nelem, size_t elsize)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(--kf_gil_countdown < 0))
		return kf_alloc_slow(dd, &kf_gil_countdown, nelem, elsize, 1);
	return dd->prev.calloc(dd->prev.ctx, nelem, elsize);
}

static void *kf_raw_malloc(void *ctx, size_t size)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(--kf_raw_countdown < 0))
		return kf_alloc_slow(dd, &kf_raw_countdown, 1, size, 0);
	return dd->prev.malloc(dd->prev.ctx, size);
}

static void *kf_raw_calloc(void *ctx, size_t nelem, size_t elsize)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(--kf_raw_countdown < 0))
		return kf_alloc_slow(dd, &kf_raw_countdown, nelem, elsize, 1);
	return dd->prev.calloc(dd->prev.ctx, nelem, elsize);
}

/* A pool address freed through our hook of dd: ours, or the layer below's. */
static __attribute__((noinline, cold)) void kf_free_pool(struct kf_domain *dd, void *ptr)
{
	if (!kf_owns(dd, ptr)) {
		dd->prev.free(dd->prev.ctx, ptr);
		return;
	}
	if (!kf_in_hook)
		kf_note(ptr, 1, dd->domain);
	kfence_free(ptr);
}

static void kf_free(void *ctx, void *ptr)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(kf_in_pool(ptr))) {
		kf_free_pool(dd, ptr);
		return;
	}
	dd->prev.free(dd->prev.ctx, ptr);
}

static __attribute__((noinline, cold)) void *
kf_realloc_pool(struct kf_domain *dd, void *ptr, size_t size)
{
	if (!kf_owns(dd, ptr))
		return dd->prev.realloc(dd->prev.ctx, ptr, size);
	size_t old;
	if (kfence_object_size(ptr, &old) != 0) {
		kfence_free(ptr);  /* reports the invalid free */
		return NULL;
	}
	void *q = dd->hook.malloc(dd, size ? size : 1);
	if (!q)
		return NULL;
	memcpy(q, ptr, old < size ? old : size);
	kf_free_pool(dd, ptr);
	return q;
}

static void *kf_realloc(void *ctx, void *ptr, size_t size)
{
	struct kf_domain *dd = ctx;
	if (KF_UNLIKELY(kf_in_pool(ptr)))
		return kf_realloc_pool(dd, ptr, size);
	/*
	 * A block of the previous allocator is not moved to the pool: its size is
	 * private to that allocator.  Growth goes through our malloc next time.
	 */
	return dd->prev.realloc(dd->prev.ctx, ptr, size);
}

/* Our hooks over allocator below in domain d. */
static void kf_install_domain(int d, const PyMemAllocatorEx *below)
{
	struct kf_domain *dd = &kf_dom[d];
	int raw = kf_domains[d] == PYMEM_DOMAIN_RAW;
	dd->prev = *below;
	dd->domain = kf_domains[d];
	dd->pass_down = !raw && below->ctx != NULL;
	dd->hook = (PyMemAllocatorEx){ dd, raw ? kf_raw_malloc : kf_gil_malloc,
				       raw ? kf_raw_calloc : kf_gil_calloc, kf_realloc, kf_free };
	PyMem_SetAllocator(kf_domains[d], &dd->hook);
}

static PyObject *kf_set_python_sampling(PyObject *mod, PyObject *arg)
{
	(void)mod;
	int on = PyObject_IsTrue(arg);
	if (on < 0)
		return NULL;
	if (on && !kf_hooked) {
		kfence_register_internal((const void *)kf_gil_malloc);
		kf_cpython_image = kf_image_of((const void *)PyMem_Malloc);
		/*
		 * Installed once and never removed: objects already in the pool must
		 * keep reaching kfence_free().  Switching off only stops sampling.
		 */
		PyMemAllocatorEx below[3];
		for (int d = 0; d < 3; d++)
			PyMem_GetAllocator(kf_domains[d], &below[d]);
		for (int d = 0; d < 3; d++)
			kf_install_domain(d, &below[d]);
		kf_hooked = 1;
	}
	if (on)
		kf_pool_filter_set();
	kf_sampling = on;
	/*
	 * Look at the gate at the next call (we hold the GIL); other threads' RAW
	 * countdowns within KF_OFF_PERIOD calls.
	 */
	kf_gil_countdown = -1;
	kf_raw_countdown = -1;
	Py_RETURN_NONE;
}

static PyObject *kf_python_sampling(PyObject *mod, PyObject *unused)
{
	(void)mod;
	(void)unused;
	return PyBool_FromLong(kf_sampling);
}

static PyObject *kf_python_allocator_name(PyObject *mod, PyObject *unused)
{
	(void)mod;
	(void)unused;
	/* CPython's own answer where it exports it (3.8 to 3.12 at least). */
	const char *(*name_of)(void) =
		(const char *(*)(void))dlsym(RTLD_DEFAULT, "_PyMem_GetCurrentAllocatorName");
	if (name_of) {
		const char *name = name_of();
		if (name)
			return PyUnicode_FromString(name);
		Py_RETURN_NONE;
	}
	/* Else: every function of every domain lies in CPython's own image. */
	const void *cpython = kf_image_of((const void *)PyMem_Malloc);
	for (int d = 0; d < 3; d++) {
		PyMemAllocatorEx cur;
		PyMem_GetAllocator(kf_domains[d], &cur);
		const void *fns[4] = { (const void *)cur.malloc, (const void *)cur.calloc,
				       (const void *)cur.realloc, (const void *)cur.free };
		for (int i = 0; i < 4; i++)
			if (!cpython || kf_image_of(fns[i]) != cpython)
				Py_RETURN_NONE;
	}
	return PyUnicode_FromString("cpython");
}

static PyObject *kf_python_hooks(PyObject *mod, PyObject *unused)
{
	(void)mod;
	(void)unused;
	if (!kf_hooked)
		return PyUnicode_FromString("absent");
	int removed = 0;
	PyMemAllocatorEx cur;
	for (int d = 0; d < 3; d++)
		removed |= kf_domain_lost(d, &cur);
	return PyUnicode_FromString(removed ? "removed" : "installed");
}

static PyObject *kf_repair_python_hooks(PyObject *mod, PyObject *unused)
{
	(void)mod;
	(void)unused;
	int repaired = 0;
	if (kf_hooked) {
		/*
		 * Over whatever is there now, which calls nothing of ours (see
		 * kf_domain_lost): the domain ends as if that tool had been started
		 * after us.  Only with the GIL; a RAW call of another thread still in
		 * our old hook could read kf_dom[d].prev while it changes, but the domain
		 * has not been sending anything to us since it was lost.
		 */
		for (int d = 0; d < 3; d++) {
			PyMemAllocatorEx cur;
			if (kf_domain_lost(d, &cur)) {
				kf_install_domain(d, &cur);
				repaired++;
			}
		}
	}
	return PyLong_FromLong(repaired);
}

static PyMethodDef kf_methods[] = {
	{ "set_python_sampling", kf_set_python_sampling, METH_O,
	  "Sample CPython's allocator domains into the pool (True) or stop (False)." },
	{ "python_sampling", kf_python_sampling, METH_NOARGS,
	  "True while CPython's allocator is sampled." },
	{ "python_allocator_name", kf_python_allocator_name, METH_NOARGS,
	  "CPython's name for the allocator in place ('pymalloc', 'malloc_debug', ...), "
	  "'cpython' when only known to be CPython's own, None when another tool hooked it." },
	{ "python_hooks", kf_python_hooks, METH_NOARGS,
	  "'absent', 'installed', or 'removed' when another tool took our hooks out of "
	  "some domain (it restored the allocator it had saved)." },
	{ "repair_python_hooks", kf_repair_python_hooks, METH_NOARGS,
	  "Put our hooks back on top of each domain where another tool removed them; "
	  "returns how many." },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef kf_module = {
	PyModuleDef_HEAD_INIT, "kfence_py._pyext",
	"Python-specific glue of kfence_py: guarded buffers and allocator hooks.", -1,
	kf_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pyext(void)
{
	if (PyType_Ready(&GuardedBufferType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&kf_module);
	if (!m)
		return NULL;
	Py_INCREF(&GuardedBufferType);
	if (PyModule_AddObject(m, "GuardedBufferBase", (PyObject *)&GuardedBufferType) < 0) {
		Py_DECREF(&GuardedBufferType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
