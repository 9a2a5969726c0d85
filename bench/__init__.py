"""Benchmarks of the supervisor against its baselines (see bench/README.md)."""
