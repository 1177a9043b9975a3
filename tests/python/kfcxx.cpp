/*
 * A C++ extension with an overrun in a member function of a class in a
 * namespace, built without debug information by the plugin's tests: its frame
 * is named from the symbol table, and must be shown demangled.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace kfcxx {

class Filler {
public:
	explicit Filler(Py_ssize_t n) : n_(n) {}

	/* Writes n + 1 bytes into a buffer of n. */
	__attribute__((noinline)) void overrun(char *p) const
	{
		for (Py_ssize_t i = 0; i <= n_; i++)
			p[i] = 'x';
	}

private:
	Py_ssize_t n_;
};

}  // namespace kfcxx

static PyObject *overrun_pymem(PyObject *, PyObject *arg)
{
	Py_ssize_t n = PyLong_AsSsize_t(arg);
	char *p = static_cast<char *>(PyMem_Malloc(static_cast<size_t>(n)));
	kfcxx::Filler(n).overrun(p);
	PyMem_Free(p);
	Py_RETURN_NONE;
}

static PyMethodDef kfcxx_methods[] = {
	{ "overrun_pymem", overrun_pymem, METH_O, "write one byte past a PyMem_Malloc buffer" },
	{ nullptr, nullptr, 0, nullptr },
};

static struct PyModuleDef kfcxx_module = {
	PyModuleDef_HEAD_INIT, "kfcxx", nullptr, -1, kfcxx_methods,
	nullptr, nullptr, nullptr, nullptr,
};

PyMODINIT_FUNC PyInit_kfcxx(void)
{
	return PyModule_Create(&kfcxx_module);
}
