/*
 * A CPython extension with deliberate memory bugs, built by the tests, and a
 * stand-in for another tool hooking CPython's allocator.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static PyMethodDef methods[] = {
	{ "foreign_hook", foreign_hook, METH_NOARGS, NULL },
	{ "foreign_unhook", foreign_unhook, METH_VARARGS, NULL },
	{ "use_after_decref", use_after_decref, METH_NOARGS, NULL },
	{ "overrun_pymem", overrun_pymem, METH_O, NULL },
	{ "double_free_pymem", double_free_pymem, METH_O, NULL },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "kfbugs", NULL, -1, methods,
				     NULL, NULL, NULL, NULL };

PyMODINIT_FUNC PyInit_kfbugs(void)
{
	return PyModule_Create(&module);
}
