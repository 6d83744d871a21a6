"""`clipforge build`, `clipforge import`, `clipforge info`: make, convert and describe models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ClipforgeError
from ._workers import add_overwrite_flag


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build a seeded random model from the registry and save it",
        description="Build a randomly initialised model of a registered architecture (see --list) with a fixed "
                    "seed, and save it as a Hugging Face directory (config.json + model.safetensors, tokenizer, "
                    "preprocessing, model card).")
    p.add_argument("name", nargs="?", help="architecture name, e.g. tiny, ancestry, ViT-B-32")
    p.add_argument("--out", type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--kind", choices=["clip", "vision", "text"], default="clip",
                   help="full CLIP, or one tower with its projection (default clip)")
    p.add_argument("--list", action="store_true", help="list the registered architectures and exit")
    add_overwrite_flag(p)
    p.set_defaults(func=run_build)

    p = sub.add_parser(
        "import", help="convert an OpenAI / open_clip checkpoint to a clipforge directory",
        description="Convert a CLIP checkpoint in the OpenAI / open_clip state-dict layout, or a released "
                    "CLIP-MoE checkpoint (experts + gates in OpenAI layout), into a clipforge / Hugging Face "
                    "directory (.pt read with weights_only=True, or .safetensors). The architecture (and for "
                    "CLIP-MoE the experts and MoE blocks) is read from the tensor names and shapes.")
    p.add_argument("checkpoint", type=Path, help="a .pt/.pth/.bin or .safetensors file")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--act", choices=["quick_gelu", "gelu"], default="quick_gelu",
                   help="MLP activation: quick_gelu for OpenAI weights and open_clip '-quickgelu' models, "
                        "gelu for other open_clip models (default quick_gelu)")
    p.add_argument("--vision-heads", type=int, help="attention heads of the vision tower (default width/64)")
    p.add_argument("--text-heads", type=int, help="attention heads of the text tower (default width/64)")
    p.add_argument("--top-k", type=int, default=2,
                   help="experts per token for a released CLIP-MoE checkpoint (not stored in it; default 2)")
    p.add_argument("--long-context", action="store_true",
                   help="stretch the text positions Long-CLIP style (77 -> 248 tokens; see `clipforge stretch`)")
    add_overwrite_flag(p)
    p.set_defaults(func=run_import)

    p = sub.add_parser(
        "stretch", help="stretch a CLIP's text context Long-CLIP style (77 -> 248 tokens)",
        description="Copy a model directory with its text position table stretched as Long-CLIP does: the first "
                    "--keep positions kept, every later gap interpolated into --factor positions, the last "
                    "extrapolated (77 positions become 20 + 4*57 = 248), so long, dense captions are not cut.")
    p.add_argument("model", type=Path, help="a model directory with a text tower (dense or CLIP-MoE)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--keep", type=int, default=20, help="leading positions kept as they are (default 20)")
    p.add_argument("--factor", type=int, default=4, help="positions each later gap becomes (default 4)")
    add_overwrite_flag(p)
    p.set_defaults(func=run_stretch)

    p = sub.add_parser(
        "info", help="describe a model directory",
        description="Print a model directory's architecture, parameter counts per tower and provenance.")
    p.add_argument("model", type=Path, help="a clipforge / Hugging Face model directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_info)


def run_build(args: argparse.Namespace) -> int:
    from ..models.registry import build, get_config_dict, list_models

    if args.list:
        for name in list_models():
            print(f"{name:10s} {get_config_dict(name).get('description', '')}")
        return 0
    if not args.name or not args.out:
        raise ClipforgeError("build needs an architecture NAME and --out DIR (or --list)")
    from ..models.io import save
    from ..run import check_out, make_artefact

    check_out(args.out, [])
    model = build(args.name, seed=args.seed, kind=args.kind)
    settings = {"name": args.name, "seed": args.seed, "kind": args.kind}
    prov = {"source": f"random init: registry architecture {args.name!r}", "seed": args.seed, "kind": args.kind,
            "name": f"{args.name} ({args.kind})"}
    if make_artefact(args.out, "build", settings, lambda d: save(model, d, provenance=prov), overwrite=args.overwrite):
        print(f"saved {args.name} ({args.kind}, seed {args.seed}) to {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..files import file_digest
    from ..models.checkpoint_files import read_state_dict
    from ..models.convert_openai import load_openai
    from ..models.io import save
    from ..run import check_out, make_artefact

    heads = dict(vision_heads=args.vision_heads, text_heads=args.text_heads, quick_gelu=args.act == "quick_gelu")
    # The layout is detected from the key names; each importer then reads the file itself (a second read,
    # small next to building the model), so both stay usable on their own.
    from ..models.clip_moe.convert_released import (
        is_released_dense_layout,
        is_released_layout,
        load_released,
        load_released_dense,
    )

    check_out(args.out, [args.checkpoint])
    sd = read_state_dict(args.checkpoint)
    if is_released_layout(sd):
        model = load_released(args.checkpoint, top_k=args.top_k, **heads)
        fmt = f"released CLIP-MoE state dict (top-{args.top_k})"
    elif is_released_dense_layout(sd):
        model = load_released_dense(args.checkpoint, **heads)
        fmt = "released CLIP-MoE dense (stage) state dict, Long-CLIP position tables merged"
    else:
        model = load_openai(args.checkpoint, **heads)
        fmt = "openai/open_clip state dict"
    if args.long_context:
        from ..models.positions import stretch_text_positions

        model = stretch_text_positions(model)
        fmt += ", text positions stretched Long-CLIP style"
    prov = {"source": f"imported from {args.checkpoint.name}", "format": fmt, "act": args.act,
            "name": args.checkpoint.stem}
    settings = {"checkpoint_sha256": file_digest(args.checkpoint), "act": args.act, "vision_heads": args.vision_heads,
                "text_heads": args.text_heads, "top_k": args.top_k, "long_context": args.long_context}
    if make_artefact(args.out, "import", settings, lambda d: save(model, d, provenance=prov),
                     inputs=[args.checkpoint], overwrite=args.overwrite):
        print(f"imported {args.checkpoint} to {args.out}")
    return 0


def run_stretch(args: argparse.Namespace) -> int:
    from ..files import file_digest
    from ..models.io import WEIGHTS, load, read_provenance, resolve_model_dir, save
    from ..models.positions import stretch_text_positions
    from ..run import check_out, make_artefact

    check_out(args.out, [args.model])
    model = load(args.model)
    before = model.text_model.embeddings.position_embedding.weight.shape[0] if hasattr(model, "text_model") else 0
    out = stretch_text_positions(model, keep=args.keep, factor=args.factor)
    after = out.text_model.embeddings.position_embedding.weight.shape[0]
    prov = dict(read_provenance(args.model))
    prov.update(source=f"{args.model.resolve()}, text positions stretched Long-CLIP style "
                       f"({before} -> {after}, keep {args.keep}, factor {args.factor})")
    prov.pop("metrics", None)  # they were the unstretched model's
    weights = resolve_model_dir(args.model) / WEIGHTS
    settings = {"model_sha256": file_digest(weights) if weights.is_file() else str(args.model), "keep": args.keep,
                "factor": args.factor}
    if make_artefact(args.out, "stretch", settings, lambda d: save(out, d, provenance=prov), inputs=[args.model],
                     overwrite=args.overwrite):
        print(f"stretched {args.model} ({before} -> {after} text positions) to {args.out}")
    return 0


def describe(model_dir: Path) -> dict:
    """Architecture, parameter counts and provenance of a saved model, as a dict."""
    from ..models.io import load, read_provenance
    from ..models.params import count_params

    model = load(model_dir)
    cfg = model.config
    towers = {}
    for tower in ("vision", "text"):
        sub = getattr(cfg, f"{tower}_config", None)
        if sub is None and getattr(cfg, "model_type", "") == f"clip_{tower}_model":
            sub = cfg
        if sub is not None:
            towers[tower] = {k: getattr(sub, k) for k in (
                "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                "image_size", "patch_size", "num_channels", "max_position_embeddings") if hasattr(sub, k)}
    return {"directory": str(model_dir), "class": type(model).__name__,
            "architecture": getattr(cfg, "architecture_name", None), "towers": towers,
            "projection_dim": getattr(cfg, "projection_dim", None), "parameters": count_params(model),
            "provenance": read_provenance(model_dir)}


def run_info(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['directory']}: {info['class']}" + (f" ({info['architecture']})" if info["architecture"] else ""))
    for tower, t in info["towers"].items():
        extra = (f", {t['image_size']}px patch {t['patch_size']}" if tower == "vision"
                 else f", context {t['max_position_embeddings']}")
        print(f"  {tower:6s}: {t['num_hidden_layers']} layers, width {t['hidden_size']}, "
              f"{t['num_attention_heads']} heads, MLP {t['intermediate_size']} ({t['hidden_act']}){extra}")
    if info["projection_dim"]:
        print(f"  projection dim: {info['projection_dim']}")
    p = info["parameters"]
    print("  parameters: " + ", ".join(f"{k} {v:,}" for k, v in p.items() if v))
    prov = info["provenance"]
    print(f"  source: {prov.get('source', 'unknown')}")
    if prov.get("metrics"):
        print("  metrics: " + json.dumps(prov["metrics"], default=str)[:400])
    return 0
