"""Speed of clipforge's MoE FFN layer against two dense FFNs and the released loop: `python -m benchmarks.moe_layer.run`."""
