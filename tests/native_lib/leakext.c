/* A compiled extension calling the test library (leak.c) with the GIL held. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

void *leak(size_t n);

static PyObject *ext_leak(PyObject *self, PyObject *arg) {
    (void)self;
    size_t n = PyLong_AsSize_t(arg);
    if (n == (size_t)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(leak(n) != NULL);
}

static PyMethodDef methods[] = {{"leak", ext_leak, METH_O, "leak(n): keep n bytes"},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "leakext", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_leakext(void) { return PyModule_Create(&module); }
