"""The demo ancestry: a small CLIP trained to convergence on built-in data, trained once and cached.

Both methods start from a pretrained CLIP. No package ships one, so clipforge trains its own on
procedural scenes (rich in attribute binding, relations and counts: what converged CLIPs still miss)
plus real Fashion-MNIST images, evaluates it beside its random initialisation, and saves it as a
plain Hugging Face CLIP directory with its metrics and loss curve. A later call with the same recipe
reuses the cached model; an interrupted run resumes from its last checkpoint (the run-directory
lifecycle of `clipforge.run.Run`, kind "ancestry"). By default it lives in the user's cache
(`default_cache()`), never in the current directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError
from ..markdown import table
from ..run import Run, is_finished
from ..schedule import Schedule, schedule

KIND = "ancestry"


@dataclass
class AncestryRecipe:
    """Everything that decides the ancestry; the cache is reused only when it is unchanged."""

    arch: str = "ancestry"
    scenes: int = 60_000  # training scenes (procedural, seeded)
    fashion: bool = True  # mix in Fashion-MNIST train (60k real images, prompt captions)
    # 800 steps: sized so that the from-nothing demo fits its time budget on 2 CPU cores (its measured wall
    # times: docs/results.md, "The demo ancestry").
    schedule: Schedule = schedule(steps=800, batch_size=256, lr=1e-3, weight_decay=0.1, warmup=80)
    eval_every: int = 200
    # evaluation sizes
    eval_scenes: int = 1000
    eval_pairs: int = 200
    eval_fashion: int | None = None  # None: the whole 10k test split
    # Training scenes' captions (clipforge.data.scenes.styles): web alt-text, like the captions OpenAI's CLIP
    # saw, so that dense-caption fine-tuning (CLIP-MoE) has something new to learn (docs/methods.md A.7) ...
    caption_style: str = "alt"
    # ... mixed with this share of `full` captions (a seeded draw per scene): real alt-text names counts and
    # places now and then without grounding them, and without them the count/relation words and the text
    # positions past the alt captions' length would never move from their initialisation ("coverage").
    full_share: float = 0.15
    # ... and a small share of `dense` captions: `dense` has words of its own (totals of five and six,
    # "every", "single", "objects", "sits", ...) and runs past the 28 tokens any alt or full caption reaches,
    # so without them 14 token rows and text positions 28-31 of the dense pool never trained (measured with
    # full_share 0.15 alone: docs/methods.md A.7). OpenAI's CLIP knows its whole vocabulary and context.
    dense_share: float = 0.05

    @classmethod
    def quick(cls) -> AncestryRecipe:
        """A toy recipe for tests: tiny model, a few steps, small evaluation sets."""
        return cls(arch="tiny", scenes=512, schedule=Schedule(steps=12, batch_size=32, lr=2e-3, weight_decay=0.1,
                                                               warmup=2), eval_every=6,
                   eval_scenes=64, eval_pairs=20, eval_fashion=200)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AncestryRecipe:
        """The recipe a `metrics.json` / provenance recorded, including the flat layout of recipes written
        before the schedule was one config (and before caption styles: they trained on "full"; before the
        `full` share: none)."""
        d = {"caption_style": "full", "full_share": 0.0, "dense_share": 0.0, **record}
        flat = {k: d.pop(k) for k in [f.name for f in fields(Schedule)] if k in d}
        if flat:
            d["schedule"] = {**asdict(Schedule()), **flat}
        d["schedule"] = Schedule(**d["schedule"])
        return cls(**d)


def default_cache() -> Path:
    """Where trained ancestries (and anything else reused across runs) live: `$CLIPFORGE_CACHE`, else
    `$XDG_CACHE_HOME/clipforge`, else `~/.cache/clipforge`."""
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "clipforge"


def display_path(path: str | Path) -> str:
    """A path as a results file shows it: under the cache as `<cache>/...`, else relative to the working
    directory when inside it, so that committed results carry no machine's absolute paths."""
    p = Path(path).resolve()
    cache = default_cache().resolve()
    if p == cache or cache in p.parents:
        return str(Path("<cache>") / p.relative_to(cache))
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return p.name


def shown_cache_path(path: str | Path) -> str:
    """A path as the report shows it: under the ancestry cache as `$CLIPFORGE_CACHE/...` (or `~/.cache/...`),
    else `files.portable_path`; never this machine's absolute layout."""
    from ..files import portable_path

    cache = Path(default_cache()).resolve()
    try:
        rel = Path(path).resolve().relative_to(cache)
    except ValueError:
        return portable_path(path)
    shown = "$CLIPFORGE_CACHE" if os.environ.get("CLIPFORGE_CACHE") else portable_path(cache)
    return str(Path(shown) / rel)


def ancestry_run_dir(cache: str | Path | None = None, quick: bool = False) -> Path:
    """The ancestry's run directory in `cache` (default `default_cache()`)."""
    return Path(cache or default_cache()) / ("ancestry-quick" if quick else "ancestry")


def training_data(recipe: AncestryRecipe):
    """Scenes train split, plus Fashion-MNIST train when asked (at the model's image size)."""
    from ..data import ConcatImageText
    from ..data.classification import FashionMNIST
    from ..data.scenes import ScenesDataset
    from ..models.registry import make_config

    size = make_config(recipe.arch).vision_config.image_size
    parts = [ScenesDataset(split="train", size=recipe.scenes, seed=recipe.schedule.seed, image_size=size,
                           caption_style=recipe.caption_style, full_share=recipe.full_share,
                           dense_share=recipe.dense_share)]
    if recipe.fashion:
        parts.append(FashionMNIST(split="train"))
    return parts[0] if len(parts) == 1 else ConcatImageText(parts)


def evaluate(model, recipe: AncestryRecipe, quick_curve: bool = False,
             tasks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Fashion-MNIST prompt accuracy, held-out scenes retrieval, MMVP-style pair accuracy (the built-in
    suite of `clipforge.eval.suite`); `quick_curve`: smaller sets and no pairs, for the training curve."""
    from ..eval.suite import SuiteConfig, evaluate_builtin

    suite = SuiteConfig(scenes=min(recipe.eval_scenes, 300) if quick_curve else recipe.eval_scenes,
                        pairs=recipe.eval_pairs, fashion=1000 if quick_curve else recipe.eval_fashion,
                        seed=recipe.schedule.seed,
                        tasks=tasks or (("fashion_mnist", "scenes_retrieval") if quick_curve else SuiteConfig().tasks))
    return evaluate_builtin(model, suite)


def _flat_curve(metrics: dict[str, Any]) -> dict[str, float]:
    return {"fmnist_acc1": metrics["fashion_mnist"]["acc1"],
            "scenes_t2i_r1": metrics["scenes_retrieval"]["image_retrieval_recall@1"],
            "scenes_i2t_r1": metrics["scenes_retrieval"]["text_retrieval_recall@1"]}


# the curve's metrics (log.jsonl keys "eval/<key>") as the report names them
CURVE_NAMES = {"fmnist_acc1": "Fashion-MNIST zero-shot top-1", "scenes_t2i_r1": "held-out scenes T→I R@1"}


def plot_curve(records: list[dict], path: Path, arch: str) -> Path:
    """The training loss with the curve evaluations on a second axis, in %."""
    from ..report.plots import loss_curve

    curve = {name: [(r["step"], 100 * r[f"eval/{k}"]) for r in records if f"eval/{k}" in r]
             for k, name in CURVE_NAMES.items()}
    return loss_curve(records, path, title=f"demo ancestry ({arch} architecture): training loss", extra=curve,
                      extra_label="quality (%)", extra_max=100)


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


def _captions_label(recipe: AncestryRecipe) -> str:
    mix = "".join(f", {share:.0%} {style}" for style, share in (("full", recipe.full_share),
                                                                ("dense", recipe.dense_share))
                  if share and recipe.caption_style != style)
    return f"{recipe.caption_style} captions{mix}"


# The caption pools whose token and position embeddings should all have trained (`coverage`): the
# fine-tuning vocabulary, read off this many held-out scenes (the evaluation's test scenes).
COVERAGE_STYLES = ("dense", "full")
COVERAGE_CAPTIONS = 2000


def coverage_captions(recipe: AncestryRecipe, style: str, n: int = COVERAGE_CAPTIONS) -> list[str]:
    """The first caption, in `style`, of each of `n` held-out test scenes (those the evaluation uses)."""
    from ..data.scenes import ScenesDataset

    ds = ScenesDataset(split="test", size=n, seed=recipe.schedule.seed + 1, caption_style=style)
    return [ds.captions_at(i)[0] for i in range(n)]


def embedding_coverage(model, init, texts: list[str]) -> dict[str, Any]:
    """The token ids and positions `texts` use (tokenised by `model`'s tokenizer at its context length:
    bos, tokens, eos; not the padding), and how many of those rows of the token and position embeddings
    differ from `init`'s (max |difference| > 0), with the ids, tokens and positions that do not."""
    import torch

    from ..models.tokenizer import tokenizer_for

    tok = tokenizer_for(model)
    ctx = int(getattr(model.config, "text_config", model.config).max_position_embeddings)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=ctx, return_tensors="pt",
              return_attention_mask=True)
    used = enc["attention_mask"].bool()
    ids, positions = torch.unique(enc["input_ids"][used]), torch.nonzero(used.any(0)).flatten()
    now, then = (getattr(m, "text_model", m).embeddings for m in (model, init))
    with torch.no_grad():
        moved_tok = (now.token_embedding.weight - then.token_embedding.weight).abs().amax(1) > 0
        moved_pos = (now.position_embedding.weight - then.position_embedding.weight).abs().amax(1) > 0
    still_ids = ids[~moved_tok[ids]].tolist()
    return {"captions": len(texts), "token_ids": len(ids), "token_ids_moved": len(ids) - len(still_ids),
            "positions": len(positions), "positions_moved": int(moved_pos[positions].sum()),
            "token_ids_not_moved": still_ids, "tokens_not_moved": tok.convert_ids_to_tokens(still_ids),
            "positions_not_moved": positions[~moved_pos[positions]].tolist()}


def coverage(model, init, recipe: AncestryRecipe, n: int = COVERAGE_CAPTIONS) -> dict[str, dict[str, Any]]:
    """`embedding_coverage` of the trained `model` against its initialisation `init` for each pool of
    COVERAGE_STYLES captions: did training reach every token and position fine-tuning will use?"""
    return {style: embedding_coverage(model, init, coverage_captions(recipe, style, n)) for style in COVERAGE_STYLES}


def coverage_line(cov: dict[str, dict[str, Any]]) -> str:
    """One line: per caption pool, the rows moved from their initialisation of those the captions use."""
    parts = [f"{style} {c['token_ids_moved']}/{c['token_ids']} token ids, {c['positions_moved']}/{c['positions']} "
             f"positions" for style, c in cov.items()]
    n = max((c["captions"] for c in cov.values()), default=0)
    return f"embedding rows moved from init / used by {n:,} held-out captions: {'; '.join(parts)}"


def _same_recipe(stored: dict | None, recipe: AncestryRecipe) -> bool:
    if not isinstance(stored, dict):
        return False
    from ..run import normalise

    try:  # compared as JSON: a stored tuple (betas) reads back as a list
        return normalise(asdict(AncestryRecipe.from_record(stored))) == normalise(asdict(recipe))
    except (TypeError, ClipforgeError):  # a field this version does not know
        return False


def _stale_metrics(out: Path) -> bool:
    """Whether a cached ancestry's metrics.json predates a suite task or the coverage record."""
    from ..eval.suite import SuiteConfig

    path = out / "metrics.json"
    if not path.is_file():
        return False
    metrics = json.loads(path.read_text())
    return "coverage" not in metrics or any(t not in metrics.get("trained", {}) for t in SuiteConfig().tasks)


def _refresh_metrics(out: Path, recipe: AncestryRecipe) -> None:
    """Evaluate a cached ancestry (and its random init) on suite tasks its metrics.json predates."""
    from ..eval.suite import SuiteConfig
    from ..files import write_json
    from ..models.io import load
    from ..models.registry import build

    path = out / "metrics.json"
    if not path.is_file():
        return
    metrics = json.loads(path.read_text())
    missing = [t for t in SuiteConfig().tasks if t not in metrics.get("trained", {})]
    if not missing and "coverage" in metrics:
        return
    from ..distributed import default_device

    dev = default_device()  # --device; batches follow the model
    model, init = load(out / "model").to(dev), build(recipe.arch, seed=recipe.schedule.seed).to(dev)
    if missing:
        print(f"[ancestry] evaluating the cached ancestry on {', '.join(missing)} (new suite tasks)")
        metrics["trained"] = {**metrics["trained"], **evaluate(model, recipe, tasks=tuple(missing))}
        metrics["random_init"] = {**metrics["random_init"], **evaluate(init, recipe, tasks=tuple(missing))}
    if "coverage" not in metrics:
        metrics["coverage"] = coverage(model, init, recipe)
        print(f"[ancestry] the cached ancestry's {coverage_line(metrics['coverage'])}")
    write_json(path, metrics)


def train_ancestry(out: str | Path, recipe: AncestryRecipe | None = None, force: bool = False,
                   progress: bool = True) -> Path:
    """Train (or reuse) the ancestry in `out`; returns the model directory `out/model`."""
    from ..data.scenes.styles import check_share, check_style

    recipe = recipe or AncestryRecipe()
    check_style(recipe.caption_style, "ancestry recipe caption_style")  # fail before any training
    check_share(recipe.full_share, "ancestry recipe full_share")
    check_share(recipe.dense_share, "ancestry recipe dense_share")
    if recipe.full_share + recipe.dense_share > 1:
        raise ClipforgeError(f"ancestry recipe full_share + dense_share must be at most 1, got "
                             f"{recipe.full_share} + {recipe.dense_share}")
    out = Path(out)
    same = lambda old, new: isinstance(old, dict) and _same_recipe(old.get("recipe"), recipe)  # noqa: E731
    settings = {"recipe": asdict(recipe)}
    if not force and is_finished(out, KIND, settings, same=same) and not _stale_metrics(out):
        # A finished cache is only read: no lock, so two processes (a sharded benchmark) can share it.
        print(f"[ancestry] reusing the cached ancestry in {out / 'model'} (same recipe)")
        return out / "model"
    with Run(out, KIND, settings, overwrite=force, same=same) as run:
        if run.done:
            print(f"[ancestry] reusing the cached ancestry in {run.artefact_path} (same recipe)")
            _refresh_metrics(out, recipe)
            return run.artefact_path
        _train(run, recipe, progress)
        run.finish()
    return run.artefact_path


def _train(run: Run, recipe: AncestryRecipe, progress: bool) -> None:
    """Train, evaluate and save the ancestry into `run` (resuming its checkpoints)."""
    from ..data.collate import Collator
    from ..files import write_json
    from ..models.io import save
    from ..models.preprocess import transform_for
    from ..models.registry import build
    from ..report.plots import read_log
    from ..train.loop import train
    from ..train.runs import had_checkpoint

    out, model_dir, wanted = run.dir, run.artefact_path, asdict(recipe)
    t0 = time.time()
    model = build(recipe.arch, seed=recipe.schedule.seed)
    metrics_init_path = out / "metrics_init.json"
    if metrics_init_path.exists():
        metrics_init = json.loads(metrics_init_path.read_text())
    else:
        print("[ancestry] evaluating the random initialisation")
        metrics_init = evaluate(model, recipe)
        write_json(metrics_init_path, metrics_init)

    data = training_data(recipe)
    s = recipe.schedule
    cfg = s.train_config(eval_every=recipe.eval_every, save_every=recipe.eval_every)
    collate = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)
    print(f"[ancestry] training {recipe.arch} for {s.steps} steps of {s.batch_size} on {len(data):,} samples "
          f"({_captions_label(recipe)})")
    model = train(model, data, cfg, out, collate_fn=collate, resume="latest" if had_checkpoint(out) else None,
                  progress=progress, eval_fn=lambda m, step: _flat_curve(evaluate(m, recipe, quick_curve=True)))
    train_s = time.time() - t0
    print("[ancestry] evaluating the trained ancestry")
    metrics = evaluate(model, recipe)
    cov = coverage(model, build(recipe.arch, seed=recipe.schedule.seed), recipe)
    print(f"[ancestry] {coverage_line(cov)}")
    records = read_log(out / "log.jsonl")
    conv = convergence(records)
    result = {"trained": metrics, "random_init": metrics_init, "convergence": conv, "coverage": cov,
              "wall_time_s": {"train_and_curve_evals": train_s, "total": time.time() - t0},
              "command": "clipforge ancestry" + ("" if recipe == AncestryRecipe() else " (custom recipe)"),
              "recipe": wanted}
    write_json(out / "metrics.json", result)
    plot_curve(records, out / "plots" / "loss.png", recipe.arch)
    save(model, model_dir, metrics=metrics, provenance={
        "source": "trained from scratch by `clipforge ancestry` on built-in data (scenes + fashion-mnist)",
        "name": "clipforge demo ancestry", "recipe": wanted, "train_wall_time_s": round(train_s, 1),
        "computed_with": computed_with()})
    print(f"[ancestry] saved to {model_dir} ({train_s / 60:.1f} min)")


def computed_with() -> dict[str, Any]:
    """What decides the bits one recipe trains to here: the same recipe trains other weights where the amp that
    "auto" resolves to, the CPU's kernels or the thread count differ (benchmarks' unit records name the weights'
    digest for that reason; this says why two digests differ)."""
    import torch

    from ..train.fast import resolve_amp

    cpu = torch.device("cpu")
    return {"amp": resolve_amp("auto", cpu), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def ensure_ancestry(out: str | Path | None = None, quick: bool = False) -> Path:
    """The cached ancestry's model directory, training it first if needed (used by the demo and the
    benchmarks); `out` None: `ancestry_run_dir()` in the user's cache."""
    return train_ancestry(out or ancestry_run_dir(quick=quick), AncestryRecipe.quick() if quick else AncestryRecipe())


def summary(metrics: dict[str, Any]) -> str:
    """A markdown table: trained vs random init."""
    rows = []
    t, r = metrics["trained"], metrics["random_init"]
    rows.append(("Fashion-MNIST prompt acc1", t["fashion_mnist"]["acc1"], r["fashion_mnist"]["acc1"]))
    for k in ("image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
              "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10"):
        name = ("scenes T2I" if k.startswith("image") else "scenes I2T") + f" R@{k.split('@')[1]}"
        rows.append((name, t["scenes_retrieval"][k], r["scenes_retrieval"][k]))
    for task, label in (("scenes_retrieval_alt", "alt-caption"), ("scenes_retrieval_dense", "dense-caption")):
        for k in ("image_retrieval_recall@1", "image_retrieval_recall@5", "text_retrieval_recall@1",
                  "text_retrieval_recall@5"):
            if task in t:
                name = f"{label} {'T2I' if k.startswith('image') else 'I2T'} R@{k.split('@')[1]}"
                rows.append((name, t[task][k], r.get(task, {}).get(k, float("nan"))))
    for k, v in t["mmvp"].items():
        rows.append((f"MMVP-style {k}", v, r["mmvp"][k]))
    out = table(["metric", "ancestry", "random init"], [[n, f"{a:.3f}", f"{b:.3f}"] for n, a, b in rows])
    if "coverage" in metrics:
        out += ["", f"Coverage (token and position embeddings): {coverage_line(metrics['coverage'])}."]
    return "\n".join(out)
