"""clipforge's speed: training-loop overhead, evaluation throughput, the MoE layer, speed options, a step profile: `python -m benchmarks.perf.run`."""
