"""Benchmarks: bench/run.py (throughput, staging, capacity) and bench/crafted.py (crafted files)."""
