"""heapspy's agent: the code that runs inside the profiled process.

Everything in this package is copied into the target and imported there, so it uses
the standard library only, keeps to Python 3.8 syntax, and imports nothing from
``heapspy``. heapspy itself imports ``heapspy_agent.protocol`` so both ends share one
definition of the wire format.
"""
