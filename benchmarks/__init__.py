"""Benchmarks of matfree_tj (plain scripts, not tests): run ``python -m benchmarks.run --help``."""
