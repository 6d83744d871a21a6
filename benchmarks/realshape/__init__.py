"""Both methods (CLIP-MoE by DMU, MM-LG learngenes) on a CLIP shaped exactly as the hub publishes ViT-B/32,
measured command by command: time per step, peak memory, disk, parameters, and embedding equality in plain
transformers.

Run from the repository root: `python -m benchmarks.realshape.run` (`--quick`: a tiny CLIP).
"""
