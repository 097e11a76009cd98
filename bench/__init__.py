"""Benchmarks: bench/run.py (``make bench``: every way, then issue 15's targets table; its modules are
listed in its docstring) and stand-alone ones (crafted.py, sources.py, events.py, search.py, ...)."""
