"""Experiments: one script per claim of the seed chapter (see experiments/README.md)."""
