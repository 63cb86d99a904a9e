"""Evaluation and benchmarking tools (not tests: their outputs are tables)."""
