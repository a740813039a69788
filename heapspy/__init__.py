"""heapspy: a sampling heap profiler you attach to a running CPython process."""

__version__ = "0.1.0"
