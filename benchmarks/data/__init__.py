"""Data at scale: a disk-backed CSV of JPEG scenes against the in-memory built-in path.

Run from the repository root: `python -m benchmarks.data.run`.
"""
