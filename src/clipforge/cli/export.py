"""`clipforge export`: each tower of a model as an ONNX or `torch.export` embedding function."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._workers import add_overwrite_flag


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model's towers to ONNX or torch.export (.pt2)",
        description="Write each tower of a model directory (dense CLIP, one tower, learngene descendant or CLIP-MoE) "
                    "as a standalone embedding function: pixel_values -> image_embeds, (input_ids, attention_mask) "
                    "-> text_embeds (projected, not normalised; dynamic batch size). A CLIP-MoE is exported with "
                    "dense expert dispatch (same outputs). Each artefact is checked against PyTorch before it is "
                    "kept (ONNX through onnxruntime when installed); export.json records the check. "
                    "ONNX needs `pip install 'clipforge[export]'`.")
    p.add_argument("model", type=Path, help="a clipforge / Hugging Face model directory")
    # Plain strings, checked by the library: a bad value gets clipforge's one-line error.
    p.add_argument("--format", required=True, metavar="{onnx,torch-export}",
                   help="onnx (vision.onnx / text.onnx) or torch-export (vision.pt2 / text.pt2, torch.export.save)")
    p.add_argument("--out", type=Path, help="output directory (default: MODEL-onnx or MODEL-torch-export beside it); "
                                            "written atomically, never over files it did not make")
    add_overwrite_flag(p)
    p.add_argument("--tower", default="both", metavar="{vision,text,both}",
                   help="which tower(s) to export (default both: every tower the model has)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..models.export import export

    out, manifest = export(args.model, args.format, out=args.out, tower=args.tower, overwrite=args.overwrite)
    for tower, entry in manifest["towers"].items():
        check = entry["check"]
        said = (f"max |diff| vs PyTorch {check['max_abs_diff']:.2e} ({check['runtime']})" if isinstance(check, dict)
                else check)
        print(f"{tower}: {out / entry['file']}  [{said}]")
    if manifest["moe_dispatch"]:
        print(f"CLIP-MoE exported with {manifest['moe_dispatch']}")
    return 0
