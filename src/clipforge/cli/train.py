"""`clipforge ancestry`, `clipforge train`, `clipforge eval`: train and measure CLIPs on any data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ClipforgeError
from ..schedule import Schedule, add_checkpoint_flags, add_schedule_flags, schedule_from_args
from ._workers import (
    add_device_flag,
    add_overwrite_flag,
    add_user_data_flags,
    add_workers_flag,
    user_data_kwargs,
    with_workers,
)

# = clipforge.data.scenes.styles.CAPTION_STYLES (not imported here: the parser stays cheap to build).
SCENES_CAPTIONS = ("full", "alt", "dense")
SCENES_CAPTIONS_HELP = ("caption style of --data scenes: full (default: colour, shape, count and relation), "
                        "alt (web alt-text: one object, no counts or relations) or dense (every attribute, "
                        "counts, relations)")


CACHE_HELP = ("cache directory for the trained ancestry, reused across runs (default $CLIPFORGE_CACHE, else "
              "$XDG_CACHE_HOME/clipforge or ~/.cache/clipforge)")

# `clipforge train`'s schedule: the library's, with a warm-up (a run from random init needs one).
TRAIN_SCHEDULE = Schedule(warmup=100)
_TRAIN_FLAGS_A = ("steps", "batch_size", "lr", "weight_decay", "warmup", "label_smoothing", "fixed_logit_scale")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ancestry", help="train (or reuse) the demo ancestry CLIP on built-in data",
        description="Train the demo ancestry CLIP to convergence on built-in data (procedural scenes + "
                    "Fashion-MNIST), evaluate it beside its random initialisation, and save it as a Hugging "
                    "Face CLIP directory (OUT/model) with metrics.json and plots/loss.png. A finished ancestry "
                    "with the same recipe is reused; an interrupted one resumes.")
    p.add_argument("--out", type=Path,
                   help="run directory (default: CACHE/ancestry, CACHE/ancestry-quick with --quick)")
    p.add_argument("--cache", type=Path, help=CACHE_HELP)
    p.add_argument("--quick", action="store_true", help="a toy ancestry for tests (tiny model, a few steps)")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    add_device_flag(p)
    add_overwrite_flag(p)
    p.add_argument("--scenes-captions", choices=SCENES_CAPTIONS,
                   help="caption style of the training scenes (default: the recipe's, alt)")
    p.add_argument("--full-share", type=float,
                   help="share of training scenes (0 to 1, drawn per scene) captioned in the full style instead "
                        "(default: the recipe's, 0.15)")
    p.add_argument("--dense-share", type=float,
                   help="share of training scenes (0 to 1, drawn per scene) captioned in the dense style instead "
                        "(default: the recipe's, 0.05)")
    p.set_defaults(func=run_ancestry)

    p = sub.add_parser(
        "train", help="contrastive training of any model on any image-text data",
        description="Contrastive (CLIP) training of a model directory or registry architecture on a built-in "
                    "dataset or your own data (CSV/TSV/JSONL, image folder, WebDataset shards, HF datasets, "
                    "parquet). Resumable with --resume latest; works under torchrun.")
    p.add_argument("--model", required=True, help="a model directory, or a registry name for a random init")
    p.add_argument("--data", required=True, action="append",
                   help="dataset: scenes, fashion-mnist, mnist or a path (repeat to mix)")
    add_user_data_flags(p)
    p.add_argument("--scenes-captions", choices=SCENES_CAPTIONS, default="full", help=SCENES_CAPTIONS_HELP)
    p.add_argument("--out", type=Path, required=True, help="run directory; the model is saved in OUT/model")
    add_schedule_flags(p, TRAIN_SCHEDULE, only=_TRAIN_FLAGS_A)
    p.add_argument("--trainable", nargs="*", help="parameter name patterns to train (fnmatch); default all")
    p.add_argument("--frozen", nargs="*", help="parameter name patterns to freeze (fnmatch)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    add_schedule_flags(p, TRAIN_SCHEDULE, only=("amp",))
    p.add_argument("--optimizer", choices=["auto", "fused", "foreach", "for-loop"], default="auto",
                   help="AdamW kernel (default auto: fused where torch has it, CPU and CUDA)")
    p.add_argument("--attention", choices=["auto", "sdpa", "eager"], default="auto",
                   help="attention kernel while training (default auto: eager on a CPU under bf16, where torch's "
                        "SDPA backward is slow, or for sequences of at most 64 tokens; sdpa elsewhere)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (minutes up front; eager fallback without a compiler)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and the RNG streams (default 0)")
    add_checkpoint_flags(p)
    add_schedule_flags(p, TRAIN_SCHEDULE, only=("log_every",))
    add_workers_flag(p, "--num-workers", dest="num_workers")
    add_device_flag(p)
    p.add_argument("--resume", help="a checkpoint file or directory to start from (a rerun of the same command "
                                    "resumes its own run without this flag)")
    add_overwrite_flag(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "eval", help="evaluate a model: zero-shot, retrieval, MMVP-style pairs, linear probe, fine-tune",
        description="Evaluate a model directory on one task and print (and optionally write) JSON metrics.")
    p.add_argument("--model", type=Path, required=True, help="a model directory")
    p.add_argument("--task", required=True, choices=["zeroshot", "retrieval", "mmvp", "linear-probe", "finetune"],
                   help="what to measure")
    p.add_argument("--data", default=None, help="dataset (default: fashion-mnist for classification, scenes "
                                                "for retrieval)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test samples (mmvp: N pairs per attribute)")
    p.add_argument("--scenes-captions", choices=SCENES_CAPTIONS, default="full", help=SCENES_CAPTIONS_HELP)
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (task finetune)")
    p.add_argument("--classnames", type=Path,
                   help="zeroshot: class names in class-index order, in CLIP_benchmark's format (one per line, or "
                        "JSON; default: the labels themselves)")
    p.add_argument("--templates", help="zeroshot: prompt templates with {c}: openai (CLIP's 80), default "
                                       "('a photo of a {c}.') or a file (one per line, or JSON); default: the "
                                       "dataset's own, else default")
    add_user_data_flags(p)
    add_device_flag(p)
    p.add_argument("--out", type=Path, help="write the metrics to this JSON file (never over a file `eval` did not "
                                            "write, unless --overwrite)")
    add_overwrite_flag(p)
    p.set_defaults(func=run_eval)


@with_workers
def run_ancestry(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..demo.ancestry import (
        AncestryRecipe,
        ancestry_run_dir,
        summary,
        train_ancestry,
    )

    recipe = AncestryRecipe.quick() if args.quick else AncestryRecipe()
    if args.steps is not None:
        if args.steps < 1:
            raise ClipforgeError(f"--steps must be at least 1, got {args.steps}")
        recipe.schedule = replace(recipe.schedule, steps=args.steps)
    if args.scenes_captions:
        recipe.caption_style = args.scenes_captions
    if args.full_share is not None:
        recipe.full_share = args.full_share
    if args.dense_share is not None:
        recipe.dense_share = args.dense_share
    out = args.out or ancestry_run_dir(args.cache, quick=args.quick)
    print(f"[ancestry] run directory {out}")
    model_dir = train_ancestry(out, recipe, force=args.overwrite)
    metrics_path = Path(out) / "metrics.json"
    if metrics_path.exists():
        print(summary(json.loads(metrics_path.read_text())))
    print(f"ancestry: {model_dir}")
    return 0


def _load_or_build(spec: str):
    from ..models.io import load, resolve_model_dir
    from ..models.registry import build, list_models

    if Path(spec).is_dir():
        model_dir = resolve_model_dir(spec)
        return load(model_dir), {"source": f"fine-tuned from {model_dir.resolve()}"}
    if spec in list_models():
        return build(spec), {"source": f"trained from random init of {spec!r}"}
    raise ClipforgeError(f"--model {spec!r}: neither a model directory nor a registry architecture")


# TrainConfig fields that do not change the result: a rerun may change them and still resume.
_RESULT_NEUTRAL = {"num_workers", "log_every", "save_every", "save_every_s", "keep_checkpoints", "eval_every"}


def _check_train_args(args: argparse.Namespace, cfg, data) -> None:
    """Refuse bad flags before anything is written (one line naming the flag)."""
    from ..distributed import dist_info
    from ..train.loop import validate_config

    if cfg.steps < 1:
        raise ClipforgeError(f"--steps must be at least 1, got {cfg.steps}")
    if cfg.batch_size > len(data):
        raise ClipforgeError(f"--batch-size {cfg.batch_size} is larger than the dataset ({len(data):,} samples)")
    validate_config(cfg, dist_info())
    if args.resume not in (None, "latest"):
        from ..train.checkpoint import load_checkpoint, resolve_resume
        from ..train.loop import CHECKPOINT_FORMAT

        path = resolve_resume(args.resume, args.out)
        if load_checkpoint(path).get("format") != CHECKPOINT_FORMAT:
            raise ClipforgeError(f"--resume {path}: not a clipforge training checkpoint")


@with_workers
def run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .. import distributed as D
    from ..data import open_mixture, require_captions
    from ..data.collate import Collator
    from ..data.loader import resolve_workers
    from ..models.io import save
    from ..models.preprocess import transform_for
    from ..models.tokenizer import tokenizer_for
    from ..run import Run, check_out
    from ..train.loop import train
    from ..train.runs import MODEL, had_checkpoint

    check_out(args.out, [args.model, *args.data])  # before the model is loaded: --out X over --model X
    model, prov = _load_or_build(args.model)
    size = model.config.vision_config.image_size
    data = require_captions(open_mixture(args.data, "train", size, scenes_captions=args.scenes_captions,
                                         **user_data_kwargs(args)))
    args.num_workers = resolve_workers(args.num_workers)
    sched = schedule_from_args(args, TRAIN_SCHEDULE, seed=args.seed, num_workers=args.num_workers,
                               grad_checkpointing=args.grad_checkpointing)
    cfg = sched.train_config(trainable=args.trainable, frozen=args.frozen, optimizer=args.optimizer,
                             attention=args.attention, compile=args.compile, save_every=args.save_every,
                             save_every_s=args.save_every_s)
    _check_train_args(args, cfg, data)
    settings = {"model": prov["source"], "data": list(args.data), "image_key": args.image_key,
                "caption_key": args.caption_key, "on_error": args.on_error, "scenes_captions": args.scenes_captions,
                "train": {k: v for k, v in asdict(cfg).items() if k not in _RESULT_NEUTRAL}}
    D.init_distributed()  # under torchrun: join the group before any rank-0-only write
    with Run(args.out, "train", settings, inputs=[args.model, *args.data], overwrite=args.overwrite) as run:
        if run.done:
            print(run.skip_message())
            return 0
        resume = args.resume or ("latest" if had_checkpoint(run.dir) else None)
        if resume == "latest" and args.resume is None:
            print(f"[train] resuming the interrupted run in {args.out}")
        collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings,
                           tokenizer=tokenizer_for(model))
        model = train(model, data, cfg, run.dir, collate_fn=collate, resume=resume)
        if D.rank() == 0:
            save(model, run.dir / MODEL, provenance={**prov, "data": args.data, "steps": args.steps,
                                                     "command": "clipforge train", "settings": settings})
        run.finish()
        if D.rank() == 0:
            print(f"saved {args.out / MODEL}")
    return 0


@with_workers
def run_eval(args: argparse.Namespace) -> int:
    from ..data import open_mixture
    from ..distributed import default_device
    from ..eval import probes, tasks
    from ..files import write_json
    from ..models.io import load

    if args.limit is not None and args.limit < 1:
        raise ClipforgeError(f"--limit must be at least 1, got {args.limit}")
    if args.steps < 1:
        raise ClipforgeError(f"--steps must be at least 1, got {args.steps}")
    if args.out is not None:
        _check_eval_out(args.out, args.overwrite)
    labelled = args.task in ("zeroshot", "linear-probe", "finetune")
    if labelled and args.data and args.data.lower() not in ("fashion-mnist", "mnist") and not args.label_key:
        raise ClipforgeError(f"--task {args.task} on {args.data} needs its class labels: name the label column "
                             "with --label-key")
    model = load(args.model).to(default_device())  # --device (with_workers); its batches follow it (eval.embed)
    size = model.config.vision_config.image_size if hasattr(model.config, "vision_config") else None
    if args.task == "mmvp":
        result = tasks.mmvp_diagnostic(model, image_size=size, n=args.limit or 200)  # pairs per attribute
    else:
        data = args.data or ("scenes" if args.task == "retrieval" else "fashion-mnist")
        test = open_mixture([data], "test", size, scenes_size=args.limit or 1000,
                            scenes_captions=args.scenes_captions, **user_data_kwargs(args))
        if args.limit and len(test) > args.limit:
            test = _Subset(test, args.limit)
        if args.task == "zeroshot":
            classnames, templates = _prompts(args, test)
            result = tasks.zeroshot_classification(model, test, classnames=classnames, templates=templates)
        elif args.task == "retrieval":
            result = tasks.retrieval(model, test)
        else:
            train_ds = open_mixture([data], "train", size, **user_data_kwargs(args))
            fn = probes.linear_probe if args.task == "linear-probe" else probes.finetune_classifier
            extra = {"steps": args.steps} if args.task == "finetune" else {}
            result = fn(model, train_ds, test, **extra)
    result = {"model": str(args.model), "task": args.task, "data": args.data, "metrics": result}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


def _prompts(args: argparse.Namespace, test) -> tuple[list[str] | None, list[str] | None]:
    """`eval --task zeroshot`'s class names and templates (None: the dataset's own), checked against its labels."""
    from ..eval.prompts import read_classnames, read_templates

    labels = getattr(test, "classnames", None)
    if not labels:
        raise ClipforgeError(f"--data {args.data}: no class labels to classify; name the label column with "
                             "--label-key")
    classnames = None
    if args.classnames is not None:
        numbered = labels == [str(i) for i in range(len(labels))]  # integer labels: names "0".."max"
        classnames = read_classnames(args.classnames, None if numbered else len(labels))
        if len(classnames) < len(labels):  # a split may lack the last classes, so a longer file is fine
            raise ClipforgeError(f"--classnames {args.classnames}: {len(classnames)} class names, but the labels "
                                 f"go up to class {len(labels) - 1}")
    templates = read_templates(args.templates) if args.templates else None
    return classnames, templates


EVAL_KEYS = {"model", "task", "data", "metrics"}


def _check_eval_out(out: Path, overwrite: bool) -> None:
    """`eval --out` replaces only a metrics file `eval` wrote (its four keys), unless --overwrite."""
    if out.is_dir():
        raise ClipforgeError(f"--out {out} is a directory; give a file name for the metrics JSON")
    if not out.exists() or overwrite:
        return
    try:
        ours = set(json.loads(out.read_text(encoding="utf-8"))) == EVAL_KEYS
    except (ValueError, UnicodeDecodeError, TypeError):
        ours = False
    if not ours:
        raise ClipforgeError(f"--out {out} exists and was not written by `clipforge eval`; pass --overwrite to "
                             "replace it or choose another file")


class _Subset:
    """The first `n` items of a dataset, keeping its class names and templates."""

    def __init__(self, ds, n: int):
        self.ds, self.n = ds, n
        self.classnames = getattr(ds, "classnames", None)
        self.templates = getattr(ds, "templates", None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i >= self.n:
            raise IndexError(i)
        return self.ds[i]
