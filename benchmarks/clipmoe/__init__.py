"""CLIP-MoE in the paper's regime (its Tables 1, 2, 4, 5 and Fig. 3 in miniature).

Run from the repository root: `python -m benchmarks.clipmoe.run`.
"""
