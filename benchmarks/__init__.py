"""clipforge's benchmarks, one subpackage each, run from the repository root: `python -m benchmarks.<name>.run`.

Not part of the installed package (`pyproject.toml` ships `src/` only); `harness` holds what they share.
"""
