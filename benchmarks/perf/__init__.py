"""clipforge's speed: training-loop overhead, evaluation throughput, the MoE layer, speed options, a step profile.

Run from the repository root: `python -m benchmarks.perf.run`.
"""
