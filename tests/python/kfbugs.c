/*
 * A CPython extension with deliberate memory bugs, built by the tests.
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

static PyMethodDef methods[] = {
	{ "use_after_decref", use_after_decref, METH_NOARGS, NULL },
	{ "overrun_pymem", overrun_pymem, METH_O, NULL },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = { PyModuleDef_HEAD_INIT, "kfbugs", NULL, -1, methods,
				     NULL, NULL, NULL, NULL };

PyMODINIT_FUNC PyInit_kfbugs(void)
{
	return PyModule_Create(&module);
}
