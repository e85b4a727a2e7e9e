"""Benchmark workloads; each module has TITLE and run(quick) -> markdown."""
