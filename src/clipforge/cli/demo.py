"""`clipforge demo`: the main job on built-in data.

For now it exercises the model layer end to end: build the demo ancestry architecture, save it in
Hugging Face layout, reload it from disk alone, check the reload is exact, and describe it. Later
stages (ancestry training, CLIP-MoE, MM-LG, the report) extend this command.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on built-in data",
                       description="Run clipforge's main job on built-in data and describe what it made.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="toy sizes, for tests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.encode import image_features, text_features
    from ..models.io import load, save
    from ..models.registry import build
    from ..models.tokenizer import tokenize
    from .models import describe, run_info

    arch = "tiny" if args.quick else "ancestry"
    model = build(arch, seed=0)
    out = args.out / f"{arch}-init"
    save(model, out, provenance={"source": f"random init: registry architecture {arch!r}", "seed": 0,
                                 "name": f"{arch} (random init)"})
    back = load(out)
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = tokenize(["a red circle to the left of a blue square", "two green stars"],
                   context_length=model.config.text_config.max_position_embeddings)
    with torch.no_grad():
        same = torch.equal(image_features(model, pixels), image_features(back, pixels)) and torch.equal(
            text_features(model, ids), text_features(back, ids))
    print(f"built, saved and reloaded {arch}: reload exact = {same}")
    run_info(argparse.Namespace(model=out, json=False))
    return 0 if same else 1
