"""How code gets into a target: PEP 768 on 3.14+, ptrace + Py_AddPendingCall before."""
