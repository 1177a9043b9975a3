/*
 * A CPython extension with deliberate memory bugs, built by the tests, and a
 * stand-in for another tool hooking CPython's allocator.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <string.h>

/* A missing Py_INCREF: the last reference is dropped, then the object is used. */
static PyObject *use_after_decref(PyObject *self, PyObject *arg)
{
	(void)self;
	(void)arg;
	PyObject *o = PyBytes_FromStringAndSize(NULL, 100);
	Py_DECREF(o);
	return PyLong_FromSsize_t(Py_SIZE(o));
}

/* Writes one byte past a PyMem_Malloc buffer of n bytes. */
static PyObject *overrun_pymem(PyObject *self, PyObject *arg)
{
	(void)self;
	Py_ssize_t n = PyLong_AsSsize_t(arg);
	char *p = PyMem_Malloc((size_t)n);
	for (Py_ssize_t i = 0; i <= n; i++)
		p[i] = 'x';
	PyMem_Free(p);
	Py_RETURN_NONE;
}

/* Frees a PyMem_Malloc buffer of n bytes twice. */
static PyObject *double_free_pymem(PyObject *self, PyObject *arg)
{
	(void)self;
	Py_ssize_t n = PyLong_AsSsize_t(arg);
	char *p = PyMem_Malloc((size_t)n);
	PyMem_Free(p);
	PyMem_Free(p);
	Py_RETURN_NONE;
}

/*
 * "Another tool", as tracemalloc or a memory profiler is: foreign_hook()
 * saves the allocator of each domain and installs pass-through hooks over it;
 * foreign_unhook() puts the saved allocators back, whatever came since.
 */
static PyMemAllocatorEx foreign_saved[3];
static int foreign_hooked;

static void *foreign_malloc(void *ctx, size_t size)
{
	PyMemAllocatorEx *below = ctx;
	return below->malloc(below->ctx, size);
}

static void *foreign_calloc(void *ctx, size_t nelem, size_t elsize)
{
	PyMemAllocatorEx *below = ctx;
	return below->calloc(below->ctx, nelem, elsize);
}

static void *foreign_realloc(void *ctx, void *ptr, size_t size)
{
	PyMemAllocatorEx *below = ctx;
	return below->realloc(below->ctx, ptr, size);
}

static void foreign_free(void *ctx, void *ptr)
{
	PyMemAllocatorEx *below = ctx;
	below->free(below->ctx, ptr);
}

static PyObject *foreign_hook(PyObject *self, PyObject *arg)
{
	(void)self;
	(void)arg;
	if (!foreign_hooked) {
		for (int d = 0; d < 3; d++) {
			PyMemAllocatorEx hook = { &foreign_saved[d], foreign_malloc, foreign_calloc,
						  foreign_realloc, foreign_free };
			PyMem_GetAllocator((PyMemAllocatorDomain)d, &foreign_saved[d]);
			PyMem_SetAllocator((PyMemAllocatorDomain)d, &hook);
		}
		foreign_hooked = 1;
	}
	Py_RETURN_NONE;
}

/* foreign_unhook(domain=None): restore the saved allocator of one domain, or of all. */
static PyObject *foreign_unhook(PyObject *self, PyObject *args)
{
	(void)self;
	int only = -1;
	if (!PyArg_ParseTuple(args, "|i", &only))
		return NULL;
	if (foreign_hooked) {
		for (int d = 0; d < 3; d++)
			if (only < 0 || only == d)
				PyMem_SetAllocator((PyMemAllocatorDomain)d, &foreign_saved[d]);
		foreign_hooked = only >= 0;
	}
	Py_RETURN_NONE;
}

/*
 * pymem_churn(domain, n, size, threads=0): n allocations of size bytes in a
 * domain (0 RAW, 1 MEM, 2 OBJ), each written and freed at once.  threads > 0
 * (RAW only, as the others need the GIL): n in each of that many threads at
 * the same time, the GIL released.
 */
struct churn {
	int domain;
	Py_ssize_t n;
	size_t size;
	int failed;
};

static void *churn_run(void *arg)
{
	struct churn *c = arg;
	for (Py_ssize_t i = 0; i < c->n; i++) {
		void *p = c->domain == 0 ? PyMem_RawMalloc(c->size)
			: c->domain == 1 ? PyMem_Malloc(c->size) : PyObject_Malloc(c->size);
		if (!p) {
			c->failed = 1;
			break;
		}
		memset(p, 0x5a, c->size);
		if (c->domain == 0)
			PyMem_RawFree(p);
		else if (c->domain == 1)
			PyMem_Free(p);
		else
			PyObject_Free(p);
	}
	return NULL;
}

static PyObject *pymem_churn(PyObject *self, PyObject *args)
{
	(void)self;
	int domain, threads = 0;
	Py_ssize_t n, size;
	if (!PyArg_ParseTuple(args, "inn|i", &domain, &n, &size, &threads))
		return NULL;
	if (domain < 0 || domain > 2 || n < 0 || size <= 0 || threads < 0 || threads > 16 ||
	    (threads && domain != 0)) {
		PyErr_SetString(PyExc_ValueError, "bad pymem_churn arguments");
		return NULL;
	}
	struct churn work[16];
	int failed = 0, started = 0;
	if (!threads) {
		work[0] = (struct churn){ domain, n, (size_t)size, 0 };
		churn_run(&work[0]);
		failed = work[0].failed;
	} else {
		pthread_t tids[16];
		Py_BEGIN_ALLOW_THREADS
		for (int t = 0; t < threads; t++) {
			work[t] = (struct churn){ domain, n, (size_t)size, 0 };
			if (pthread_create(&tids[t], NULL, churn_run, &work[t]) != 0)
				break;
			started++;
		}
		for (int t = 0; t < started; t++) {
			pthread_join(tids[t], NULL);
			failed |= work[t].failed;
		}
		Py_END_ALLOW_THREADS
	}
	if (failed || (threads && started != threads)) {
		PyErr_SetString(PyExc_MemoryError, "pymem_churn: an allocation or a thread failed");
		return NULL;
	}
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{ "foreign_hook", foreign_hook, METH_NOARGS, NULL },
	{ "foreign_unhook", foreign_unhook, METH_VARARGS, NULL },
	{ "use_after_decref", use_after_decref, METH_NOARGS, NULL },
	{ "overrun_pymem", overrun_pymem, METH_O, NULL },
	{ "double_free_pymem", double_free_pymem, METH_O, NULL },
	{ "pymem_churn", pymem_churn, METH_VARARGS, NULL },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "kfbugs", NULL, -1, methods,
				     NULL, NULL, NULL, NULL };

PyMODINIT_FUNC PyInit_kfbugs(void)
{
	return PyModule_Create(&module);
}
