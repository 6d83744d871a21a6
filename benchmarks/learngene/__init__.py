"""Pieces of the MM-LG benchmark (`benchmarks/learngene/run.py`): budgets, data, methods, tasks, report."""
