"""The daemon: watch a machine's processes and keep a heapspy session on each worker
that matches a ``[[watch]]`` of the config file, one forked session
process per target (the session ``heapspy attach`` runs).

``config`` loads and checks the TOML file, ``match`` decides whether one process is
wanted, ``discover`` scans ``/proc``, ``child`` forks one session process, ``outcome``
turns its exit code into what to do next, ``supervise`` is the loop, ``sdnotify`` talks
to systemd and ``logs`` formats for journald. Nothing here imports the command line.
"""
