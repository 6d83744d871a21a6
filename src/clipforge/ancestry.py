"""The demo ancestry: a small CLIP trained to convergence on built-in data, trained once and cached.

Both methods start from a pretrained CLIP. No package ships one, so clipforge trains its own on
procedural scenes (rich in attribute binding, relations and counts: what converged CLIPs still miss)
plus real Fashion-MNIST images, evaluates it beside its random initialisation, and saves it as a
plain Hugging Face CLIP directory with its metrics and loss curve. A later call with the same recipe
reuses the cached model; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


from .errors import ClipforgeError


@dataclass
class AncestryRecipe:
    """Everything that decides the ancestry; the cache is reused only when it is unchanged."""

    arch: str = "ancestry"
    scenes: int = 60_000  # training scenes (procedural, seeded)
    fashion: bool = True  # mix in Fashion-MNIST train (60k real images, prompt captions)
    steps: int = 1800
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    eval_every: int = 300
    # evaluation sizes
    eval_scenes: int = 1000
    eval_pairs: int = 200
    eval_fashion: int | None = None  # None: the whole 10k test split
    caption_style: str = "full"  # training scenes' captions: full, alt or dense (clipforge.data.scenes.styles)

    @classmethod
    def quick(cls) -> "AncestryRecipe":
        """A toy recipe for tests: tiny model, a few steps, small evaluation sets."""
        return cls(arch="tiny", scenes=512, steps=12, batch_size=32, lr=2e-3, warmup=2, eval_every=6,
                   eval_scenes=64, eval_pairs=20, eval_fashion=200)


def training_data(recipe: AncestryRecipe):
    """Scenes train split, plus Fashion-MNIST train when asked (at the model's image size)."""
    from .data import ConcatImageText
    from .data.classification import FashionMNIST
    from .data.scenes import ScenesDataset
    from .models.registry import make_config

    size = make_config(recipe.arch).vision_config.image_size
    parts = [ScenesDataset(split="train", size=recipe.scenes, seed=recipe.seed, image_size=size,
                           caption_style=recipe.caption_style)]
    if recipe.fashion:
        parts.append(FashionMNIST(split="train"))
    return parts[0] if len(parts) == 1 else ConcatImageText(parts)


def evaluate(model, recipe: AncestryRecipe, quick_curve: bool = False) -> dict[str, Any]:
    """Fashion-MNIST prompt accuracy, held-out scenes retrieval, MMVP-style pair accuracy (the built-in
    suite of `clipforge.eval.suite`); `quick_curve`: smaller sets and no pairs, for the training curve."""
    from .eval.suite import SuiteConfig, evaluate_builtin

    suite = SuiteConfig(scenes=min(recipe.eval_scenes, 300) if quick_curve else recipe.eval_scenes,
                        pairs=recipe.eval_pairs, fashion=1000 if quick_curve else recipe.eval_fashion,
                        seed=recipe.seed,
                        tasks=("fashion_mnist", "scenes_retrieval") + (() if quick_curve else ("mmvp",)))
    return evaluate_builtin(model, suite)


def _flat_curve(metrics: dict[str, Any]) -> dict[str, float]:
    return {"fmnist_acc1": metrics["fashion_mnist"]["acc1"],
            "scenes_t2i_r1": metrics["scenes_retrieval"]["image_retrieval_recall@1"],
            "scenes_i2t_r1": metrics["scenes_retrieval"]["text_retrieval_recall@1"]}


def convergence(records: list[dict], window: int = 150) -> dict[str, float]:
    """Mean loss over the last `window` logged steps vs the `window` before: flat means converged."""
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if len(losses) < 4:
        return {"last": float("nan"), "previous": float("nan"), "relative_change": float("nan")}
    last_step = losses[-1][0]
    last = [v for s, v in losses if s > last_step - window]
    prev = [v for s, v in losses if last_step - 2 * window < s <= last_step - window]
    a = sum(last) / len(last)
    b = sum(prev) / len(prev) if prev else float("nan")
    return {"last": a, "previous": b, "relative_change": (b - a) / b if prev else float("nan")}


def _same_recipe(stored: dict | None, wanted: dict[str, Any]) -> bool:
    # Recipes saved before caption styles existed trained on today's captions: "full".
    return isinstance(stored, dict) and {"caption_style": "full", **stored} == wanted


def train_ancestry(out: str | Path, recipe: AncestryRecipe | None = None, force: bool = False,
                   progress: bool = True) -> Path:
    """Train (or reuse) the ancestry in `out`; returns the model directory `out/model`."""
    from .files import write_json
    from .data.collate import Collator
    from .data.scenes.styles import check_style
    from .models.io import read_provenance, save
    from .models.preprocess import transform_for
    from .models.registry import build
    from .report.plots import loss_curve, read_log
    from .train.loop import TrainConfig, train

    recipe = recipe or AncestryRecipe()
    check_style(recipe.caption_style, "ancestry recipe caption_style")  # fail before any training
    out = Path(out)
    model_dir = out / "model"
    wanted = asdict(recipe)
    if model_dir.is_dir() and not force:
        if _same_recipe(read_provenance(model_dir).get("recipe"), wanted):
            print(f"[ancestry] reusing the cached ancestry in {model_dir} (same recipe)")
            return model_dir
        raise ClipforgeError(f"{model_dir} holds an ancestry trained with another recipe; "
                             "pass --overwrite to retrain or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    args_path = out / "args.json"
    if args_path.exists() and not _same_recipe(json.loads(args_path.read_text()), wanted) and not force:
        raise ClipforgeError(f"{args_path}: an unfinished run with another recipe is here; "
                             "pass --overwrite to start over or choose another --out")
    write_json(args_path, wanted)
    t0 = time.time()
    model = build(recipe.arch, seed=recipe.seed)
    metrics_init_path = out / "metrics_init.json"
    if metrics_init_path.exists():
        metrics_init = json.loads(metrics_init_path.read_text())
    else:
        print("[ancestry] evaluating the random initialisation")
        metrics_init = evaluate(model, recipe)
        write_json(metrics_init_path, metrics_init)

    data = training_data(recipe)
    cfg = TrainConfig(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                      weight_decay=recipe.weight_decay, warmup=recipe.warmup, seed=recipe.seed,
                      log_every=10, eval_every=recipe.eval_every, save_every=recipe.eval_every)
    collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)
    print(f"[ancestry] training {recipe.arch} for {recipe.steps} steps of {recipe.batch_size} "
          f"on {len(data):,} samples")
    model = train(model, data, cfg, out, collate_fn=collate, resume="latest", progress=progress,
                  eval_fn=lambda m, step: _flat_curve(evaluate(m, recipe, quick_curve=True)))
    train_s = time.time() - t0
    print("[ancestry] evaluating the trained ancestry")
    metrics = evaluate(model, recipe)
    records = read_log(out / "log.jsonl")
    conv = convergence(records)
    result = {"trained": metrics, "random_init": metrics_init, "convergence": conv,
              "wall_time_s": {"train_and_curve_evals": train_s, "total": time.time() - t0},
              "command": "clipforge ancestry" + ("" if recipe == AncestryRecipe() else " (custom recipe)"),
              "recipe": wanted}
    write_json(out / "metrics.json", result)
    curve = {k: [(r["step"], r[f"eval/{k}"]) for r in records if f"eval/{k}" in r]
             for k in ("fmnist_acc1", "scenes_t2i_r1")}
    loss_curve(records, out / "plots" / "loss.png", title=f"ancestry ({recipe.arch}) training loss",
               extra=curve)
    save(model, model_dir, metrics=metrics, provenance={
        "source": "trained from scratch by `clipforge ancestry` on built-in data (scenes + fashion-mnist)",
        "name": "clipforge demo ancestry", "recipe": wanted, "train_wall_time_s": round(train_s, 1)})
    print(f"[ancestry] saved to {model_dir} ({train_s / 60:.1f} min)")
    return model_dir


def ensure_ancestry(out: str | Path, quick: bool = False) -> Path:
    """The cached ancestry directory, training it first if needed (used by the demo and benchmarks)."""
    return train_ancestry(out, AncestryRecipe.quick() if quick else AncestryRecipe())


def summary(metrics: dict[str, Any]) -> str:
    """A markdown table: trained vs random init."""
    rows = []
    t, r = metrics["trained"], metrics["random_init"]
    rows.append(("Fashion-MNIST prompt acc1", t["fashion_mnist"]["acc1"], r["fashion_mnist"]["acc1"]))
    for k in ("image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
              "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10"):
        name = ("scenes T2I" if k.startswith("image") else "scenes I2T") + f" R@{k.split('@')[1]}"
        rows.append((name, t["scenes_retrieval"][k], r["scenes_retrieval"][k]))
    for k, v in t["mmvp"].items():
        rows.append((f"MMVP-style {k}", v, r["mmvp"][k]))
    lines = ["| metric | ancestry | random init |", "|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {b:.3f} |" for n, a, b in rows]
    return "\n".join(lines)
