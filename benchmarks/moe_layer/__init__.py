"""Speed of clipforge's MoE FFN layer against two dense FFNs and the released loop.

Run from the repository root: `python -m benchmarks.moe_layer.run`.
"""
