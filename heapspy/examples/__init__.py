"""Example programs bundled with heapspy, used by `heapspy demo` and the tests."""
