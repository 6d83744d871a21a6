"""Data at scale: a disk-backed CSV of JPEG scenes against the in-memory built-in path: `python -m benchmarks.data.run`."""
