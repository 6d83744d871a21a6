"""`clipforge learngene extract|descend`: MM-LG learngenes from the command line.

Every subcommand is resumable: rerunning the same command skips finished work and continues an
interrupted training run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ClipforgeError
from ..schedule import (
    LEARNGENE_SCHEDULE,
    add_schedule_flags,
    finite_float,
    schedule_from_args,
)
from ._workers import (
    add_device_flag,
    add_execution_flags,
    add_overwrite_flag,
    add_user_data_flags,
    add_workers_flag,
    user_data_kwargs,
    with_workers,
)

# Schedule fields exposed as flags (generated: clipforge.schedule); descend has --pretrain-steps instead.
LG_FLAGS = ("steps", "batch_size", "lr", "weight_decay", "warmup", "amp")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "learngene", help="MM-LG: extract a learngene from an ancestry CLIP, descend models",
        description="MM-LG (clipforge's reconstruction of the Multimodal Learngene, arXiv 2506.16673, from its "
                    "abstract and the TLEG/SWS lineage): extract a learngene from a trained ancestry CLIP, "
                    "descend CLIP, vision-only and text-only models of any depth from it (the benchmark: "
                    "`python -m benchmarks.learngene.run` in a source checkout).")
    lsub = top.add_subparsers(dest="learngene_command", metavar="SUBCOMMAND")
    lsub.required = True
    _add_extract(lsub)
    _add_descend(lsub)


def _add_extract(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser(
        "extract", help="extract a learngene by distillation from an ancestry",
        description="Build an Aux-Net whose blocks are weighted sums of the learngene's multimodal and unimodal "
                    "blocks, train it by KD from the frozen ancestry on image-text data, and save the learngene "
                    "to OUT/learngene (the run lives in OUT/extract). Rerun to resume or to skip a finished one.")
    p.add_argument("--model", "--ancestry", dest="ancestry", type=Path, required=True,
                   help="ancestry model directory, or a `clipforge ancestry` run directory holding model/")
    p.add_argument("--data", action="append",
                   help="training data: scenes, fashion-mnist, mnist or a path; repeat to mix "
                        "(default scenes + fashion-mnist)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--mode", choices=["mmlg", "tleg_per_tower", "shared_only"], default="mmlg",
                   help="mmlg: shared multimodal + per-tower unimodal blocks; tleg_per_tower: no shared block; "
                        "shared_only: no unimodal blocks (default mmlg)")
    p.add_argument("--schedule", choices=["linear", "blend", "learned"], default="linear",
                   help="weighted-sum coefficients over depth (default linear, TLEG's)")
    p.add_argument("--stages", type=int, default=1, help="SWS-style stages, each with its own blocks (default 1)")
    p.add_argument("--construction", choices=["select", "project"], default="select",
                   help="how the narrower tower reads the shared (multimodal) block, stored at the wider tower's "
                        "shape: select = uniform element selection (weight selection); project = the residual "
                        "stream through a fixed projection fitted to the ancestry's output heads (default select; "
                        "docs/methods.md, towers of different widths)")
    p.add_argument("--width-vision", type=int,
                   help="learngene vision width below the ancestry's (heads keep their size, MLP its ratio; "
                        "initialised from the ancestry's element-selected layers; default: the ancestry's width)")
    p.add_argument("--width-text", type=int, help="learngene text width (as --width-vision)")
    p.add_argument("--aux-depth-vision", type=int, help="Aux-Net vision depth (default: the ancestry's)")
    p.add_argument("--aux-depth-text", type=int, help="Aux-Net text depth (default: the ancestry's)")
    p.add_argument("--init", choices=["lstsq", "mean", "random"],
                   help="learngene init: least-squares fit of the ancestry's layers over the schedule's basis, "
                        "the mean ancestry block (towers of one shape only), or TLEG's random init (default lstsq)")
    p.add_argument("--alpha", type=finite_float, default=1.0, help="KD weight; 1 - alpha weighs InfoNCE (default 1)")
    p.add_argument("--beta", type=finite_float, default=0.0, help="feature-distillation weight (default 0)")
    p.add_argument("--feature", choices=["cosine", "mse"], default="cosine",
                   help="feature term (with --beta): 1 - cos of the normalised embeddings, or MSE of the "
                        "unnormalised ones (default cosine)")
    p.add_argument("--tau", type=finite_float, default=1.0, help="KD temperature (default 1)")
    p.add_argument("--tie-temperature", action="store_true",
                   help="the Aux-Net's logits use the ancestry's logit scale (default: its own)")
    p.add_argument("--sample-depths", type=_depth_list,
                   help="train the Aux-Net at a depth drawn per step from this comma list, e.g. 2,4,6 "
                        "(one process only; default: the Aux-Net depth every step)")
    p.add_argument("--eval-scenes", type=int, default=500,
                   help="held-out test scenes the Aux-Net and the ancestry are measured on (retrieval R@1; "
                        "0: no measurement; default 500)")
    p.add_argument("--eval-fashion", type=int, default=1000,
                   help="Fashion-MNIST test images for zero-shot accuracy (0: none; default 1000)")
    p.add_argument("--eval-every", type=int, help="measure every N steps (default steps / 5)")
    p.add_argument("--plateau", action="store_true",
                   help="end at a plateau: the best mean retrieval R@1 rose by less than --plateau-delta over "
                        "the last --plateau-patience measurements (default: run the step budget)")
    p.add_argument("--plateau-patience", type=int, default=2, help="measurements without gain (default 2)")
    p.add_argument("--plateau-delta", type=finite_float, default=0.005, help="gain that counts (default 0.005)")
    add_schedule_flags(p, LEARNGENE_SCHEDULE, what="extraction: ", only=LG_FLAGS)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and RNG streams (default 0)")
    add_overwrite_flag(p)
    add_user_data_flags(p)
    add_workers_flag(p)
    add_device_flag(p)
    add_execution_flags(p)
    p.set_defaults(func=run_extract)


def _depth_list(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        depths = []
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of depths >= 1, e.g. 2,4,6; got {text!r}")
    return depths


def _add_descend(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser(
        "descend", help="initialise models of any depth and modality from a learngene",
        description="Write one plain Hugging Face model directory per --shape under OUT (clip-v4-t4, vision-v6, "
                    "text-t2, clip-v4w96-t4w64), optionally after a short contrastive pre-training. Finished "
                    "shapes are skipped.")
    p.add_argument("--learngene", type=Path, required=True,
                   help="learngene directory (OUT/learngene of `learngene extract`, or its parent)")
    p.add_argument("--shape", action="append", required=True,
                   help="clip:DV:DT (or clip:D), vision:D or text:D, each depth optionally with a width DxW, e.g. "
                        "clip:4x96:4x64 or vision:6x96 (width left out: the learngene's; at most the ancestry's "
                        "depth and the learngene's width; heads keep their size, the MLP its ratio); repeat for "
                        "a family")
    p.add_argument("--out", type=Path, required=True, help="output directory (a rerun with the same flags resumes it)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="short pre-training per descendant (default 0)")
    p.add_argument("--data", action="append", help="pre-training data (default scenes + fashion-mnist)")
    p.add_argument("--kd-from", type=Path,
                   help="ancestry: CLIP descendants pre-train by KD from it; one-tower descendants pair with its "
                        "other tower (default for them: the learngene's own ancestry)")
    add_schedule_flags(p, LEARNGENE_SCHEDULE, what="pre-training: ", only=LG_FLAGS[1:])
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and RNG streams (default 0)")
    add_overwrite_flag(p)
    add_user_data_flags(p)
    add_workers_flag(p)
    add_device_flag(p)
    add_execution_flags(p)
    p.set_defaults(func=run_descend)


@with_workers
def run_extract(args: argparse.Namespace) -> int:
    from ..learngene.distill import Distill
    from ..learngene.extract import ExtractConfig, extract
    from ..learngene.inputs import load_ancestry
    from ..learngene.quality import MEAN_R1, Quality
    from ..run import check_out
    from ..train.plateau import Plateau

    check_out(args.out, [args.ancestry, *(args.data or [])])

    for flag in ("eval_scenes", "eval_fashion", "eval_every", "plateau_patience"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag in ("eval_every", "plateau_patience") else 0):
            raise ClipforgeError(f"--{flag.replace('_', '-')} must be >= "
                                 f"{1 if flag in ('eval_every', 'plateau_patience') else 0}, got {value}")
    training = schedule_from_args(args, LEARNGENE_SCHEDULE, seed=args.seed)
    quality = None
    if args.eval_scenes > 0:
        size = load_ancestry(args.ancestry)[0].config.vision_config.image_size
        quality = Quality.builtin(size, scenes=args.eval_scenes, fashion=args.eval_fashion)
    every = args.eval_every or max(1, (training.steps or 1) // 5)
    if args.plateau and quality is None:
        raise ClipforgeError("--plateau needs the Aux-Net measured: --eval-scenes must be > 0")
    plateau = Plateau(MEAN_R1, args.plateau_patience, args.plateau_delta) if args.plateau else None
    cfg = ExtractConfig(mode=args.mode, coefficients=args.schedule, stages=args.stages,
                        aux_depth_vision=args.aux_depth_vision, aux_depth_text=args.aux_depth_text, init=args.init,
                        construction=args.construction, width_vision=args.width_vision, width_text=args.width_text,
                        distill=Distill(args.alpha, args.beta, args.tau, args.feature, args.tie_temperature),
                        sample_depths=args.sample_depths, schedule=training)
    lg_dir = extract(args.ancestry, args.data or ["scenes", "fashion-mnist"], args.out, cfg, quality=quality,
                     eval_every=every if quality else 0, plateau=plateau, force=args.overwrite,
                     data_options=user_data_kwargs(args))
    meta = json.loads((lg_dir / "learngene.json").read_text())
    print(f"learngene: {lg_dir} ({meta['num_parameters']:,} parameters)")
    q = meta.get("provenance", {}).get("auxnet_quality")
    if q:
        for label, key in (("Aux-Net at step 0", "step0"), ("Aux-Net final", "final"), ("ancestry", "ancestry")):
            print(f"  {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in q[key].items()))
    return 0


@with_workers
def run_descend(args: argparse.Namespace) -> int:
    from ..learngene.pipeline import descend_family
    from ..run import check_out

    check_out(args.out, [args.learngene, args.kd_from, *(args.data or [])])
    lg_dir = args.learngene if (args.learngene / "learngene.json").is_file() else args.learngene / "learngene"
    data = (args.data or ["scenes", "fashion-mnist"]) if args.pretrain_steps > 0 else None
    pretraining = None
    if args.pretrain_steps < 0:
        raise ClipforgeError(f"--pretrain-steps must not be negative, got {args.pretrain_steps}")
    if args.pretrain_steps > 0:
        pretraining = schedule_from_args(args, LEARNGENE_SCHEDULE, steps=args.pretrain_steps, seed=args.seed)
    made = descend_family(lg_dir, args.shape, args.out, pretraining=pretraining, data=data, kd_from=args.kd_from,
                          force=args.overwrite, data_options=user_data_kwargs(args))
    for name, path in made.items():
        print(f"{name}: {path}")
    return 0
