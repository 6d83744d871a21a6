"""MM-LG end to end: `extract` a learngene from an ancestry, then `descend_family` from it.

Part of clipforge's MM-LG reconstruction (the paper's abstract plus its TLEG lineage; docs/methods.md B.3,
B.4). Both steps write to a directory, resume an interrupted run (the training loop's checkpoints)
and skip work already finished with the same settings; finished work with *other* settings is an
error unless `force`, so a rerun never silently mixes two recipes.

* `extract` (in `extract.py`, re-exported here): a learngene from the ancestry by distillation
  through the Aux-Net, saved as `OUT/learngene` with its provenance.
* `descend_family`: one plain HF directory per shape (`OUT/<name>`, `models.io.save`), optionally
  after a short unconstrained pre-training through `pretrain` (CLIP: contrastive, or KD from
  `kd_from`; one-tower descendants: contrastive against the frozen ancestry's other tower, LiT-style,
  since a lone tower has no partner of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn
from torch.utils.data import Dataset

from ..cost import Timer, caption_tokens, flops_per_sample, forward_flops
from ..errors import ClipforgeError
from ..files import file_digest
from ..models.encode import model_kind
from ..models.params import count_params
from ..run import Run, make_artefact, normalise
from ..schedule import Schedule
from ..train.runs import had_checkpoint, read_log
from .distill import Distill, TowerStep
from .inputs import brief, load_ancestry, open_data
from .learngene import Learngene


class ShapeSpec(NamedTuple):
    """A descendant's kind and, per tower, depth and width (None: not in this kind, or the learngene's width)."""

    kind: str
    depth_vision: int | None
    depth_text: int | None
    width_vision: int | None = None
    width_text: int | None = None


# --- steps for one-tower pre-training ---------------------------------------------------------------




# --- pre-training ----------------------------------------------------------------------------------


def pretrain(model: nn.Module, dataset: Dataset, run_dir: str | os.PathLike, *, training: Schedule,
             partner: nn.Module | None = None, kd_from: nn.Module | None = None, kd_alpha: float = 0.5,
             distill: Distill | None = None, eval_fn: Callable | None = None, eval_every: int = 0,
             until: Callable | None = None, save_every: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Unconstrained contrastive pre-training of `model` in place (resumable in `run_dir`); returns a record.

    CLIP: InfoNCE (`kd_from`: distillation from it instead, `distill`, default `Distill(alpha=kd_alpha)`).
    One tower: `TowerStep(partner)`. `until` (with `eval_fn`): a stop rule such as `train.plateau.Plateau`.
    The record holds the settings, samples seen, wall time of this session (evaluation time apart),
    caption tokens per sample and analytic training FLOPs (student 3× forward, plus one forward of any
    teacher or partner).
    """
    from ..data.collate import Collator
    from ..models.preprocess import transform_for
    from ..train.loop import train

    kind = model_kind(model)
    ref = model if kind == "clip" else partner
    if kind != "clip" and partner is None:
        raise ClipforgeError(f"pre-training a {kind}-only descendant needs a partner CLIP (the ancestry) "
                             "for the other modality")
    context = (model.config if kind == "text" else ref.config.text_config).max_position_embeddings
    vision_cfg = model.config if kind == "vision" else ref.config
    collate = Collator(transform_for(vision_cfg), context)
    distill = distill or Distill(alpha=kd_alpha)
    step_fn = (distill.step(kd_from) if kd_from is not None else None) if kind == "clip" \
        else TowerStep(partner, kind)
    sched = training.resolved(len(dataset))
    steps, batch_size, seed = sched.steps, sched.batch_size, sched.seed
    cfg = replace(sched, log_every=max(1, min(sched.log_every, steps // 10))).train_config(
        eval_every=eval_every if eval_fn else 0, keep_checkpoints=2, save_every=save_every)
    run_dir = Path(run_dir)
    resumed = had_checkpoint(run_dir)
    eval_timer = TimedEval(eval_fn) if eval_fn is not None else None
    with Timer() as t:
        train(model, dataset, cfg, run_dir, collate_fn=collate, step_fn=step_fn, eval_fn=eval_timer,
              until=until, resume="latest", progress=progress)
    eval_s = eval_timer.seconds if eval_timer is not None else 0.0
    model.eval()
    tokens = caption_tokens(dataset, context, batch_size, seed=seed)
    log = read_log(run_dir / "log.jsonl")
    done = next((r["step"] for r in log if r.get("stopped")), steps)  # fewer than `steps` if `until` fired
    samples = done * batch_size
    fwd = forward_flops(model.config, kind, tokens)
    extra = 0
    if kind == "clip" and kd_from is not None:
        extra = flops_per_sample(kd_from.config, "clip", tokens)
    elif kind != "clip":
        extra = flops_per_sample(partner.config, "text" if kind == "vision" else "image", tokens)
    return {**brief(sched), "objective": "kd" if kind == "clip" and kd_from is not None else
            "infonce" if kind == "clip" else "infonce vs frozen partner tower",
            "kd_alpha": distill.alpha if kind == "clip" and kd_from is not None else None,
            "distill": distill.to_dict() if kind == "clip" and kd_from is not None else None,
            "steps_done": done, "stopped_early": done < steps,
            "samples_seen": samples, "caption_tokens_per_sample": tokens,
            "train_flops": samples * (3 * fwd + extra), "wall_time_s": round(t.seconds - eval_s, 2),
            "eval_time_s": round(eval_s, 2), "resumed": resumed}


class TimedEval:
    """Wraps an `eval_fn` and adds up its wall time, so evaluation is not billed as training."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, model: nn.Module, step: int) -> Any:
        with Timer() as t:
            out = self.fn(model, step)
        self.seconds += t.seconds
        return out


# --- extraction ------------------------------------------------------------------------------------


# --- descendants -----------------------------------------------------------------------------------


_SHAPE_HELP = ("expected clip:DV:DT, clip:D, vision:D or text:D, each depth optionally with a width as DxW "
               "(e.g. clip:4x96:4x64, vision:6x96), depths and widths >= 1")


def _depth_width(text: str, whole: str) -> tuple[int, int | None]:
    depth, sep, width = text.partition("x")
    try:
        d, w = int(depth), (int(width) if sep else None)
    except ValueError:
        raise ClipforgeError(f"shape {whole!r}: {_SHAPE_HELP}") from None
    if d < 1 or (w is not None and w < 1):
        raise ClipforgeError(f"shape {whole!r}: {_SHAPE_HELP}")
    return d, w


def parse_shape(text: str) -> ShapeSpec:
    """`clip:4x96:4x64`, `clip:4:4`, `clip:4` (both towers), `vision:6x96`, `text:2` → a `ShapeSpec`.

    A width left out is the learngene's; the bounds (the ancestry's depth, the learngene's width, a width
    the head size divides) are checked against the learngene by `descend.descendant_shapes`.
    """
    kind, *towers = text.split(":")
    ok = (kind == "clip" and len(towers) in (1, 2)) or (kind in ("vision", "text") and len(towers) == 1)
    if not ok:
        raise ClipforgeError(f"shape {text!r}: {_SHAPE_HELP}")
    parsed = [_depth_width(x, text) for x in towers]
    if kind == "clip":
        (dv, wv), (dt, wt) = parsed[0], parsed[-1]
        if len(towers) == 1 and wv is not None:
            raise ClipforgeError(f"shape {text!r}: the towers' widths differ; give both: clip:DVxWV:DTxWT")
        return ShapeSpec("clip", dv, dt, wv, wt)
    (d, w), = parsed
    return ShapeSpec(kind, d, None, w, None) if kind == "vision" else ShapeSpec(kind, None, d, None, w)


def as_spec(shape: ShapeSpec | tuple | str) -> ShapeSpec:
    """A `ShapeSpec` from its text, a tuple (kind, depth_vision, depth_text[, width_vision, width_text]) or itself."""
    return parse_shape(shape) if isinstance(shape, str) else ShapeSpec(*shape)


def shape_name(shape: ShapeSpec | tuple) -> str:
    """Directory name of a descendant: `clip-v4-t4`, `clip-v4w96-t4w64`, `vision-v6`, `text-t2w64`."""
    kind, dv, dt, wv, wt = as_spec(shape)
    v = f"v{dv}" + (f"w{wv}" if wv else "")
    t = f"t{dt}" + (f"w{wt}" if wt else "")
    return {"clip": f"clip-{v}-{t}", "vision": f"vision-{v}", "text": f"text-{t}"}[kind]


def descend_family(learngene_dir: str | os.PathLike, shapes: Sequence[ShapeSpec | str], out_dir: str | os.PathLike,
                   pretraining: Schedule | None = None, data: Sequence[str] | Dataset | None = None,
                   kd_from: str | os.PathLike | None = None, *, kd_alpha: float = 0.5,
                   eval_fn: Callable | None = None, eval_every: int = 0, force: bool = False,
                   progress: bool = True, data_options: dict[str, Any] | None = None) -> dict[str, Path]:
    """Descendants of `shapes` as plain HF directories `out_dir/<shape_name>`; returns {name: dir}.

    With a `pretraining` schedule each is pre-trained on `data` (run in `out_dir/_runs/<name>`): CLIP
    descendants contrastively (or by KD from `kd_from`, an ancestry directory); one-tower descendants
    contrastively against the frozen other tower of `kd_from`, else of the learngene's own ancestry.
    A descendant already finished with the same settings (and the same learngene file) is skipped.
    """

    learngene_dir = Path(learngene_dir)
    lg = Learngene.load(learngene_dir)
    lg_meta = json.loads((learngene_dir / "learngene.json").read_text())
    digest = file_digest(learngene_dir / "learngene.safetensors")
    specs = [as_spec(s) for s in shapes]
    for spec in specs:  # every shape checked before anything is written
        _check_spec(lg, spec)
    if pretraining is not None and data is None:
        raise ClipforgeError("pre-training descendants needs --data")
    dataset, data_desc = open_data(data, lg.config.image_size, **(data_options or {})) \
        if pretraining is not None else (None, None)
    sched = pretraining.resolved(len(dataset)) if pretraining is not None else None
    ancestry_src = kd_from or _ancestry_of(learngene_dir, lg_meta)
    out_dir = Path(out_dir)
    family = normalise({"learngene_sha256": digest, "pretrain": None if sched is None else {
        **brief(sched), "data": data_desc, "kd_from": str(kd_from) if kd_from is not None else None,
        "kd_alpha": kd_alpha if kd_from is not None else None}})
    inputs = [learngene_dir, kd_from, *(data if isinstance(data, (list, tuple)) else [])]
    done: dict[str, Path] = {}
    # The family's claim (a rerun may add shapes); each descendant is an artefact made once (its own claim).
    with Run(out_dir, "learngene descend", family, overwrite=force, inputs=inputs, artefact="_runs") as run:
        ancestry: list[nn.Module] = []  # loaded once, when a descendant first needs it
        for spec in specs:
            name = shape_name(spec)
            settings = normalise({"learngene": str(learngene_dir.resolve()), "shape": list(spec), **family,
                                  "partner": str(ancestry_src) if spec[0] != "clip" and sched else None})
            write = _descendant_writer(lg, spec, learngene_dir, settings, sched, dataset, ancestry, ancestry_src,
                                       kd_from, kd_alpha, eval_fn, eval_every, out_dir / "_runs" / name, progress)
            make_artefact(out_dir / name, "learngene descendant", settings, write, overwrite=force)
            shutil.rmtree(out_dir / "_runs" / name / "checkpoints", ignore_errors=True)  # saved: free the disk
            done[name] = out_dir / name
        run.finish()
    return done


def _ancestry_of(learngene_dir: Path, meta: dict[str, Any]) -> str | None:
    """Where the learngene's ancestry is on this machine: its provenance names it as written for others
    (relative to where it was extracted, `~/...` or just its name), the extraction run's claim
    (`OUT/settings.json`, beside `OUT/learngene`) by its full path; the first that is a directory."""
    from ..files import read_json_object

    candidates = [meta.get("provenance", {}).get("ancestry")]
    claim = learngene_dir.parent / "settings.json"
    if claim.is_file():
        with contextlib.suppress(ClipforgeError):  # an unreadable claim is just one lead fewer
            candidates.append(read_json_object(claim).get("settings", {}).get("ancestry"))
    for c in candidates:
        if isinstance(c, str) and Path(c).expanduser().is_dir():
            return str(Path(c).expanduser())
    return None


def _check_spec(lg: Learngene, spec: ShapeSpec) -> None:
    from .descend import descendant_shapes

    cfg = lg.config
    towers = ("vision", "text") if spec.kind == "clip" else (spec.kind,)
    depths = {"vision": spec.depth_vision or cfg.aux_depth_vision, "text": spec.depth_text or cfg.aux_depth_text}
    try:
        descendant_shapes(cfg, depths, {"vision": spec.width_vision, "text": spec.width_text}, towers)
    except ClipforgeError as e:
        raise ClipforgeError(f"shape {shape_name(spec)}: {e}") from None


def _descendant_writer(lg: Learngene, spec: ShapeSpec, learngene_dir: Path, settings: dict[str, Any],
                       sched: Schedule | None, dataset: Dataset | None, ancestry: list[nn.Module],
                       ancestry_src: Any, kd_from: Any, kd_alpha: float, eval_fn: Callable | None, eval_every: int,
                       run_dir: Path, progress: bool) -> Callable[[Path], None]:
    """`write(dir)`: descend one shape from the learngene, pre-train it if asked (resumable in `run_dir`), save."""
    from ..models.io import save
    from .descend import descend, provenance

    kind, dv, dt, wv, wt = spec

    def write(model_dir: Path) -> None:
        model = descend(lg, dv, dt, kind, wv, wt)
        prov = {**provenance(lg, dv, dt, kind, source=str(learngene_dir.resolve()), width_vision=wv,
                             width_text=wt),
                "rule": "block i of L′ = a(i, L′)·first + b(i, L′)·second; non-block parts copied; a narrower "
                        "tower cut by element selection (whole heads, head size and MLP ratio kept)",
                "settings": settings, "params": count_params(model)["total"]}
        if sched is not None:
            if (kind != "clip" or kd_from is not None) and not ancestry:
                if ancestry_src is None:
                    raise ClipforgeError("one-tower pre-training needs the ancestry: pass --kd-from")
                ancestry.append(load_ancestry(ancestry_src)[0])
            print(f"[descend] {shape_name(spec)}: pre-training {sched.steps} steps")
            prov["pretrain"] = pretrain(
                model, dataset, run_dir, training=sched, partner=ancestry[0] if kind != "clip" else None,
                kd_from=ancestry[0] if kind == "clip" and kd_from is not None else None, kd_alpha=kd_alpha,
                eval_fn=eval_fn, eval_every=eval_every, progress=progress)
        save(model.cpu(), model_dir, provenance=prov)
        print(f"[descend] {shape_name(spec)}: saved ({prov['params']:,} parameters)")

    return write
