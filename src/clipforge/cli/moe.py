"""`clipforge moe dmu|stage|pack|route|baseline|stats`: CLIP-MoE from the command line.

`dmu` runs the whole Diversified Multiplet Upcycling pipeline; each phase is also its own command.
Every command is resumable (rerun it) and every output directory records its provenance.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError
from ..schedule import Schedule, add_schedule_flags, finite_float
from ._workers import (
    add_device_flag,
    add_execution_flags,
    add_overwrite_flag,
    add_user_data_flags,
    add_workers_flag,
    user_data_kwargs,
    with_workers,
)

# MCL / router settings beyond the schedule: flag → (field, type, help). Unset flags keep the preset's value.
MCL_FLAGS: list[tuple[str, str, type, str]] = [
    ("--experts", "num_experts", int, "experts per MoE block = MCL stages + 1 (paper 4)"),
    ("--k-img", "k_img", int, "image clusters per stage (paper 3)"),
    ("--k-txt", "k_txt", int, "text clusters per stage (paper 3)"),
    ("--policy", "policy", str, "small-cluster policy: drop, keep_remainder, merge_small"),
    ("--cluster-order", "cluster_order", str, "order clusters are visited each round: fixed (released code) or "
                                              "shuffled (clipforge)"),
]
ROUTER_FLAGS: list[tuple[str, str, type, str]] = [
    ("--balance-loss", "balance_loss", str, "switch (paper) or mixtral (released code)"),
    ("--alpha", "alpha", finite_float, "balance-loss weight (paper 0.01)"),
]
# Schedule fields each phase exposes as --stage-* / --router-* (generated: clipforge.schedule).
PHASE_SCHEDULE = ("steps", "batch_size", "lr", "weight_decay", "warmup", "label_smoothing", "fixed_logit_scale")


# `moe baseline`: the paper's schedule at a short-run lr, a batch that fits a CPU and a 10 % warm-up.
BASELINE_SCHEDULE = Schedule(steps=300, batch_size=256, lr=1e-4, weight_decay=0.2, warmup=30, max_warmup_frac=0.1,
                             label_smoothing=0.1, fixed_logit_scale=100.0)


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", action="append", required=required,
                   help="training data: scenes, fashion-mnist, mnist or a path (repeat to mix)")
    p.add_argument("--scenes-size", type=int, default=8_000, help="scenes to draw for --data scenes (default 8000)")
    p.add_argument("--scenes-seed", type=int, default=1,
                   help="scenes generator seed (default 1: scenes the demo ancestry never saw; 0 = its own)")
    p.add_argument("--scenes-captions", choices=["full", "alt", "dense"], default="full",
                   help="caption style of --data scenes: full (default), alt (short alt-text) or dense (every "
                        "attribute, counts, relations); see clipforge.data.scenes.styles")
    add_user_data_flags(p)
    add_workers_flag(p)
    add_device_flag(p)
    add_execution_flags(p)


def _config_args(p: argparse.ArgumentParser, mcl: bool = True, router: bool = True) -> None:
    p.add_argument("--preset", choices=["paper", "epoch", "demo", "quick"], default="paper",
                   help="base settings (default paper: the released recipe; epoch: stages and routers of one epoch "
                        "of --data, clusters sized to it, the base's logit scale, batch 32 unless "
                        "--stage-batch-size: clipforge.moe.recipe, what benchmarks/clipmoe measured); flags below "
                        "override them")
    for prefix, flags, what in ([("stage-", MCL_FLAGS, "MCL stage: ")] if mcl else []) + (
            [("router-", ROUTER_FLAGS, "router training: ")] if router else []):
        for flag, _, typ, help_ in flags:
            p.add_argument(flag, type=typ, help=help_)
        add_schedule_flags(p, None, prefix=prefix, what=what, only=PHASE_SCHEDULE,
                           aliases={"batch_size": [f"--{prefix}batch"]})
    if mcl or router:
        add_schedule_flags(p, None, only=("amp",))
    if mcl:
        p.add_argument("--train-attention", action="store_true",
                       help="MCL stages train attention too (beyond the paper; default FFN only)")
        p.add_argument("--init", choices=["base", "previous"], help="each stage starts from (paper: base)")
    p.add_argument("--top-k", type=int, help="experts per token (paper 2)")
    p.add_argument("--seed", type=int, help="seed of clustering, sampling and routers (default 0)")


def _add_dmu(msub: argparse._SubParsersAction) -> None:
    """`moe dmu`: the whole pipeline from a dense CLIP."""
    p = msub.add_parser("dmu", help="the whole pipeline: stages, packing, routers, evaluation",
                        description="Run DMU from a dense CLIP directory on your data. Resumable: rerun the same "
                                    "command after an interruption.")
    p.add_argument("--model", "--base", dest="base", type=Path, required=True,
                   help="the dense CLIP to grow: a model directory or a run directory holding model/ (alias --base)")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory; the CLIP-MoE is OUT/model")
    _config_args(p)
    p.add_argument("--eval-data", help="held-out data to measure the CLIP-MoE against the base on, read with the "
                                       "same --image-key/--caption-key/--label-key: retrieval on its pairs, zero-shot "
                                       "when it has labels (default: the built-in suite when --data is built-in, "
                                       "else no evaluation)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.add_argument("--keep-stages", action="store_true",
                   help="keep the MCL stage models and packed/ once finished (default: the CLIP-MoE only, which "
                        "holds every stage's FFNs; clipforge.moe.pack.expert_model rebuilds a stage model)")
    p.add_argument("--eval-size", choices=["full", "quick"], default="full",
                   help="built-in evaluation sets: full (1k scenes, 200 pairs per attribute, 10k FMNIST) or quick")
    add_overwrite_flag(p)
    p.set_defaults(func=run_dmu)


def _add_stage(msub: argparse._SubParsersAction) -> None:
    """`moe stage`: the MCL stages only."""
    p = msub.add_parser("stage", help="MCL stages only: the dense stage models (experts)",
                        description="Run MCL stages 1..E-1 from a base; OUT/stage{j}/model is expert j.")
    p.add_argument("--model", "--base", dest="base", type=Path, required=True,
                   help="the dense CLIP: a model directory or a run directory holding model/ (alias --base)")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (a rerun with the same flags resumes it)")
    _config_args(p, router=False)
    add_overwrite_flag(p)
    p.set_defaults(func=run_stage)


def _add_pack(msub: argparse._SubParsersAction) -> None:
    """`moe pack`: dense stage models into one CLIP-MoE."""
    p = msub.add_parser("pack", help="pack dense stage models into one CLIP-MoE",
                        description="Expert e of every MoE block is that block's FFN from the e-th --stage model "
                                    "(the first is the base); routers are freshly drawn.")
    p.add_argument("--stage", type=Path, action="append", required=True,
                   help="stage model directory (repeat, base first)")
    p.add_argument("--out", type=Path, required=True, help="output directory (a rerun with the same flags resumes it)")
    p.add_argument("--top-k", type=int, default=2, help="experts each token uses (default 2)")
    p.add_argument("--seed", type=int, default=0, help="router init seed")
    add_overwrite_flag(p)
    p.set_defaults(func=run_pack)


def _add_route(msub: argparse._SubParsersAction) -> None:
    """`moe route`: train a CLIP-MoE's routers."""
    p = msub.add_parser("route", help="train the routers of a CLIP-MoE",
                        description="Train only the routers (InfoNCE + alpha * balance loss) on shuffled batches.")
    p.add_argument("--model", type=Path, required=True, help="a CLIP-MoE directory (e.g. from `moe pack`)")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="run directory; the result is OUT/model")
    _config_args(p, mcl=False)
    add_overwrite_flag(p)
    p.set_defaults(func=run_route)


def _add_baseline(msub: argparse._SubParsersAction) -> None:
    """`moe baseline`: the paper's baselines on the same data."""
    p = msub.add_parser("baseline", help="direct fine-tuning, sparse upcycling or the w/o-MCL ablation",
                        description="The baselines of the CLIP-MoE paper on the same data.")
    p.add_argument("method", choices=["direct-ft", "sparse-upcycling", "without-mcl"])
    p.add_argument("--model", "--base", dest="base", type=Path, required=True,
                   help="the dense CLIP: a model directory or a run directory holding model/ (alias --base)")
    p.add_argument("--finetuned", type=Path, help="without-mcl: the direct-FT model directory")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (a rerun with the same flags resumes it)")
    add_schedule_flags(p, BASELINE_SCHEDULE, only=PHASE_SCHEDULE + ("amp",), aliases={"batch_size": ["--batch"]})
    p.add_argument("--params", choices=["ffn", "ffn+attention", "full"], default="ffn", help="direct-ft: what trains")
    p.add_argument("--experts", type=int, default=4, help="sparse-upcycling: experts")
    p.add_argument("--top-k", type=int, default=2, help="experts each token uses (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and RNG streams (default 0)")
    add_overwrite_flag(p)
    p.set_defaults(func=run_baseline)


def _add_stats(msub: argparse._SubParsersAction) -> None:
    """`moe stats`: routing statistics and cost of a CLIP-MoE."""
    p = msub.add_parser("stats", help="routing statistics and the built-in evaluation of a CLIP-MoE",
                        description="Share of tokens per block and expert as first / second choice (JSON + heat "
                                    "map), parameters stored and active, FLOPs and latency.")
    p.add_argument("--model", type=Path, required=True,
                   help="a CLIP-MoE model directory or a run directory holding model/")
    p.add_argument("--out", type=Path, required=True, help="directory for routing.json, cost.json, routing.png")
    p.add_argument("--samples", type=int, default=500, help="held-out scenes to route (default 500)")
    add_device_flag(p)
    add_overwrite_flag(p)
    p.set_defaults(func=run_stats)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "moe", help="CLIP-MoE: grow a CLIP by Diversified Multiplet Upcycling",
        description="CLIP-MoE (arXiv 2409.19291): MCL stages fine-tune the base's FFNs on cluster-pure batches, "
                    "the stage FFNs become the experts of a top-k MoE in every block, and only the routers train.")
    msub = top.add_subparsers(dest="moe_command", metavar="SUBCOMMAND")
    msub.required = True

    _add_dmu(msub)
    _add_stage(msub)
    _add_pack(msub)
    _add_route(msub)
    _add_baseline(msub)
    _add_stats(msub)


def _model_dir(path: Path) -> Path:
    from ..models.io import resolve_model_dir

    return resolve_model_dir(path)


def _check_out(args: argparse.Namespace, *models: Path | None) -> None:
    """`--out` never is, holds or lies inside an input (checked before anything is loaded)."""
    from ..run import check_out

    check_out(args.out, [*models, *(getattr(args, "data", None) or [])])


def _config(args: argparse.Namespace, base: Path, data: Any):
    """The preset (the epoch recipe sized to `data` and read from `base`), then the flags over it."""
    from ..moe.presets import presets
    from ..moe.recipe import epoch_recipe
    from ..schedule import schedule_from_args

    if args.preset == "epoch":
        batch = getattr(args, "stage_batch_size", None) or 32
        cfg = epoch_recipe(base, len(data), batch, **({"experts": args.experts} if getattr(args, "experts", None)
                                                       else {}))
    else:
        cfg = presets()[args.preset]
    shared = {k: v for k, v in (("seed", args.seed), ("amp", getattr(args, "amp", None))) if v is not None}
    over = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in MCL_FLAGS
            if getattr(args, flag[2:].replace("-", "_"), None) is not None}
    if getattr(args, "train_attention", False):
        over["train_attention"] = True
    if getattr(args, "init", None):
        over["init"] = args.init
    mcl = replace(cfg.mcl, schedule=schedule_from_args(args, cfg.mcl.schedule, "stage-", **shared), **over)
    rover = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in ROUTER_FLAGS
             if getattr(args, flag[2:].replace("-", "_"), None) is not None}
    router = replace(cfg.router, schedule=schedule_from_args(args, cfg.router.schedule, "router-", **shared), **rover)
    top = {"top_k": args.top_k} if args.top_k is not None else {}
    return replace(cfg, mcl=mcl, router=router, **top)


def _open(args: argparse.Namespace, image_size: int):
    from ..data import open_mixture, require_captions

    data = require_captions(open_mixture(args.data, "train", image_size, scenes_size=args.scenes_size,
                                         scenes_seed=args.scenes_seed, scenes_captions=args.scenes_captions,
                                         **user_data_kwargs(args)))
    if [d.lower() for d in args.data] == ["scenes"] and args.scenes_size <= 200_000:
        from ..data.cached import Cached

        # DMU reads the pool once per stage to embed it and again to train: render the scenes once.
        style = "" if args.scenes_captions == "full" else f",{args.scenes_captions}"
        data = Cached(data, f"scenes[train,seed{args.scenes_seed},n{args.scenes_size},{image_size}px{style}]")
    return data


def _image_size(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    return int(cfg.get("vision_config", {}).get("image_size", 224))


def _steps(steps: int | None) -> str:
    return f"{steps} steps" if steps else "one epoch"


def _scale(scale: float | None) -> str:
    return "learned" if scale is None else f"fixed at {scale:.1f}"


@with_workers
def run_dmu(args: argparse.Namespace) -> int:
    from .. import distributed as D
    from ..moe.dmu import dmu
    from .moe_eval import eval_plan, evaluate_dmu

    _check_out(args, args.base, *([args.eval_data] if args.eval_data else []))
    base = _model_dir(args.base)
    data = _open(args, _image_size(base))
    cfg = _config(args, base, data)
    plan = eval_plan(args, _image_size(base))  # said (and its data opened) now, not found wanting at the end
    if D.rank() == 0:
        print(f"[moe dmu] base {base}, {len(data):,} training samples, {cfg.mcl.num_experts} experts "
              f"({cfg.mcl.num_experts - 1} MCL stages of {_steps(cfg.mcl.schedule.steps)}, "
              f"{cfg.mcl.k_img}×{cfg.mcl.k_txt} clusters each), top-{cfg.top_k}, router "
              f"{_steps(cfg.router.schedule.steps)}, logit scale {_scale(cfg.mcl.schedule.fixed_logit_scale)}, on "
              f"{D.default_device()}; output {args.out}\n[moe dmu] evaluation: {plan['says']}")
    model_dir = dmu(str(base), data, args.out, cfg, force=args.overwrite, keep_stages=args.keep_stages)
    main = D.rank() == 0
    D.cleanup()  # every rank is done: rank 0 evaluates alone, after the process group is gone (no barrier waits)
    if not main:
        return 0
    if plan["on"] and not (args.out / "eval.json").is_file():
        evaluate_dmu(args, base, model_dir, plan)
    if (args.out / "eval.md").is_file():
        print((args.out / "eval.md").read_text())
    print(f"CLIP-MoE: {model_dir}")
    return 0


@with_workers
def run_stage(args: argparse.Namespace) -> int:
    from ..moe.mcl import run_stages

    _check_out(args, args.base)
    base = _model_dir(args.base)
    data = _open(args, _image_size(base))
    dirs = run_stages(str(base), data, _config(args, base, data).mcl, args.out, resume=not args.overwrite)
    for j, d in enumerate(dirs):
        print(f"expert {j}: {d}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ..files import file_digest
    from ..models import io
    from ..models.clip_moe.modeling_clip_moe import moe_param_counts
    from ..moe.pack import pack
    from ..run import make_artefact

    _check_out(args, *args.stage)
    if len(args.stage) < 2:
        raise ClipforgeError(f"--stage: a CLIP-MoE needs at least two stage models (the base first), got "
                             f"{len(args.stage)}")
    if not 1 <= args.top_k <= len(args.stage):
        raise ClipforgeError(f"--top-k {args.top_k}: must lie in [1, {len(args.stage)}] (the number of --stage "
                             "models)")
    stages = [_model_dir(s) for s in args.stage]
    model = pack([str(s) for s in stages], top_k=args.top_k, seed=args.seed)
    prov = {"source": "clipforge moe pack", "experts": [str(s) for s in args.stage], "top_k": args.top_k,
            "router_seed": args.seed}
    settings = {"stages_sha256": [file_digest(s / io.WEIGHTS) for s in stages], "top_k": args.top_k,
                "seed": args.seed}
    if make_artefact(args.out, "moe pack", settings, lambda d: io.save(model, d, provenance=prov),
                     overwrite=args.overwrite):
        c = moe_param_counts(model)
        print(f"packed {len(stages)} experts (top-{args.top_k}): {c['stored']:,} parameters stored, "
              f"{c['active_per_token']:,} active per token -> {args.out}")
    return 0


@with_workers
def run_route(args: argparse.Namespace) -> int:
    from ..models import io
    from ..moe.routers import train_routers

    if args.top_k is not None:
        raise ClipforgeError("--top-k: a packed model's top-k is fixed at packing (`moe pack --top-k`)")
    _check_out(args, args.model)
    model_dir = _model_dir(args.model)
    data = _open(args, _image_size(model_dir))
    cfg = _config(args, model_dir, data)
    model = io.load(model_dir)
    train_routers(model, data, args.out, cfg.router,
                  {"model": str(model_dir.resolve())}, {"name": "CLIP-MoE (routers trained)"},
                  force=args.overwrite, inputs=[model_dir])
    print(f"CLIP-MoE: {args.out / 'model'}")
    return 0


@with_workers
def run_baseline(args: argparse.Namespace) -> int:
    from ..moe import baselines as B
    from ..moe.routers import RouterConfig
    from ..schedule import schedule_from_args

    sched = schedule_from_args(args, BASELINE_SCHEDULE, seed=args.seed)
    _check_out(args, args.base, args.finetuned)
    base = _model_dir(args.base)
    data = _open(args, _image_size(base))
    if args.method == "direct-ft":
        cfg = B.FinetuneConfig(schedule=sched, params=args.params)
        B.direct_ft(str(base), data, args.out, cfg, force=args.overwrite)
    else:
        rcfg = RouterConfig(schedule=sched)
        if args.method == "sparse-upcycling":
            B.sparse_upcycling(str(base), data, args.out, rcfg, num_experts=args.experts, top_k=args.top_k,
                               force=args.overwrite)
        else:
            if args.finetuned is None:
                raise ClipforgeError("without-mcl needs --finetuned (a `moe baseline direct-ft` model)")
            B.without_mcl(str(base), str(_model_dir(args.finetuned)), data, args.out, rcfg, top_k=args.top_k,
                          force=args.overwrite)
    print(f"{args.method}: {args.out / 'model'}")
    return 0


@with_workers
def run_stats(args: argparse.Namespace) -> int:
    from ..cost import model_costs
    from ..data.scenes import ScenesDataset
    from ..distributed import default_device
    from ..files import file_digest, write_json
    from ..models import io
    from ..moe.routing import load_shares, routing_stats
    from ..report.moe_run import plot_routing
    from ..run import make_artefact

    _check_out(args, args.model)
    model_dir = _model_dir(args.model)
    model = io.load(model_dir).to(default_device())  # --device (with_workers)
    size = int(model.config.vision_config.image_size)
    stats = routing_stats(model, ScenesDataset(split="test", size=args.samples, seed=1, image_size=size))

    def write(d: Path) -> None:
        write_json(d / "routing.json", stats)
        write_json(d / "cost.json", model_costs(model))
        plot_routing(stats, d / "routing.png", title=f"routing: {model_dir}")

    settings = {"model_sha256": file_digest(model_dir / io.WEIGHTS), "samples": args.samples}
    make_artefact(args.out, "moe stats", settings, write, overwrite=args.overwrite)
    print(json.dumps({"routing": load_shares(stats), "heat_map": str(args.out / "routing.png")}, indent=2))
    return 0
