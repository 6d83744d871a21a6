"""The CLIP-MoE benchmark (v2, issue 33): the paper's Tables 1, 2, 4, 5 and Fig. 3 in miniature, SE-aware verdicts.

Run from the repository root: `python -m benchmarks.clipmoe.run` (README.md: protocol, units, sizing).
"""
