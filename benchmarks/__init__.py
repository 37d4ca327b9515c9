"""Benchmark scripts: ``python -m benchmarks.NAME --json FILE``; each compares against its peer."""
