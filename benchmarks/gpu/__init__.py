"""A ten-minute GPU check of clipforge: training step, MoE layer, evaluation throughput, router-training memory.

Run from the repository root: `python -m benchmarks.gpu.run` (`--quick`: tiny shapes on the CPU).
"""
