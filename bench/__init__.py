"""Benchmarks: Stageflow side by side with bare Temporal and the raw shell, in one run.

`python -m bench` (or `make bench`) starts its own dev server on free ports,
measures every figure of BENCHMARKS.md, prints a table and writes
`bench/results/latest.json`. Nothing here is imported by Stageflow itself.
"""
