"""`extract`: a learngene from an ancestry by distillation through the Aux-Net (docs/methods.md B.3, B.3b).

Part of clipforge's MM-LG reconstruction (the paper's abstract plus its TLEG lineage). The learngene
starts from the ancestry by least squares when the shapes allow (`fit.fit_to_ancestry`), is trained by
`Distill` from the frozen ancestry through `train()`, is measured (`Quality`) at step 0, at intervals
and at the end beside the ancestry, and may end at a plateau (`train.plateau.Plateau`). It is saved as
`OUT/learngene` (`Learngene.save`) with provenance: ancestry, data, steps, objective, the Aux-Net's
quality curve, wall time and an analytic FLOPs estimate (`cost.flops_per_sample`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..cost import Timer, caption_tokens, flops_per_sample
from ..errors import ClipforgeError
from ..models.params import count_params
from ..run import Run, normalise
from ..schedule import LEARNGENE_SCHEDULE, Schedule
from ..train.plateau import Plateau
from ..train.runs import had_checkpoint, read_log
from .config import LearngeneConfig
from .distill import Distill
from .learngene import Learngene
from .quality import MEAN_R1, Quality


@dataclass
class ExtractConfig:
    """Everything an MM-LG extraction does (the counterpart of CLIP-MoE's `DMUConfig`; docs/methods.md B.3).

    `mode`, `coefficients` (the weighted-sum schedule over depth), `stages` and the Aux-Net depths shape the
    learngene (`LearngeneConfig`; depths default to the ancestry's); `construction` how the narrower tower
    reads the shared tensors ("select" or "project", `widths.TowerMap`); `width_vision` / `width_text` a
    learngene narrower than the ancestry (default: its widths); `init` its start (default "lstsq": fitted
    to the ancestry's layers, cut to the learngene's widths by element selection); `distill` the objective;
    `sample_depths` trains the Aux-Net at a depth drawn per step from that list (`DepthSampledStep`);
    `schedule` the optimisation (`LEARNGENE_SCHEDULE`).
    """

    mode: str = "mmlg"
    coefficients: str = "linear"
    stages: int = 1
    aux_depth_vision: int | None = None
    aux_depth_text: int | None = None
    init: str | None = None
    construction: str = "select"
    width_vision: int | None = None
    width_text: int | None = None
    distill: Distill = field(default_factory=Distill)
    sample_depths: list[int] | None = None
    schedule: Schedule = field(default_factory=lambda: LEARNGENE_SCHEDULE)

    def learngene_config(self, ancestry: nn.Module) -> LearngeneConfig:
        """The learngene's shape and choices for `ancestry`."""
        choices: dict[str, Any] = dict(mode=self.mode, schedule=self.coefficients, num_stages=self.stages,
                                       construction=self.construction, init=self.init or "lstsq")
        named = {"aux_depth_vision": self.aux_depth_vision, "aux_depth_text": self.aux_depth_text,
                 "vision_width": self.width_vision, "text_width": self.width_text}
        choices.update({k: v for k, v in named.items() if v is not None})
        return LearngeneConfig.from_ancestry(ancestry.config, **choices)


def extract(ancestry_dir: str | os.PathLike, data: Sequence[str] | Dataset, out_dir: str | os.PathLike,
            cfg: ExtractConfig | None = None, *, quality: Quality | None = None, eval_every: int = 0,
            plateau: Plateau | None = None, resume: bool = True, force: bool = False, progress: bool = True,
            data_options: dict[str, Any] | None = None) -> Path:
    """Extract a learngene by distillation from the ancestry as `cfg` says; returns `out_dir/learngene`.

    `quality` measures the Aux-Net at step 0, every `eval_every` steps and at the end, and the ancestry
    once on the same data; `plateau` (needs `quality` and `eval_every`) ends the extraction early by its
    rule. The run is a `clipforge.run.Run` on `out_dir` (skipped when finished with the same settings);
    its training lives in `out_dir/extract` (checkpoints, `log.jsonl`); `resume=False` or `force` starts over.
    `data_options`: how users' files are read (`image_key`, `caption_key`, `on_error`).
    """
    from .inputs import brief, load_ancestry, open_data

    cfg = cfg or ExtractConfig()
    out_dir = Path(out_dir)
    lg_dir, run_dir = out_dir / "learngene", out_dir / "extract"
    ancestry, anc_path = load_ancestry(ancestry_dir)
    lg_cfg = cfg.learngene_config(ancestry)
    if plateau is not None and (quality is None or eval_every <= 0):
        raise ClipforgeError("a plateau rule needs the Aux-Net measured: give quality data and eval_every > 0")
    dataset, data_desc = open_data(data, lg_cfg.image_size, **(data_options or {}))
    sched = cfg.schedule.resolved(len(dataset))
    depths = sorted({int(d) for d in cfg.sample_depths}) if cfg.sample_depths else None
    settings = normalise({
        "ancestry": str(anc_path), "data": data_desc, "learngene_config": lg_cfg.to_dict(),
        "kd": cfg.distill.to_dict(), "sample_depths": depths, "train": brief(sched),
        "eval": {"every": eval_every, **quality.describe()} if quality is not None and eval_every > 0 else None,
        "plateau": plateau.to_dict() if plateau is not None else None})
    data_paths = list(data) if isinstance(data, (list, tuple)) else []
    with Run(out_dir, "learngene extract", settings, overwrite=force or not resume, artefact="learngene",
             inputs=[anc_path, *data_paths]) as run:
        if run.done:
            print(f"[extract] {run.skip_message()}")
            return lg_dir
        _extract(run, lg_cfg, ancestry, anc_path, dataset, data_desc, sched, settings, cfg.distill, depths,
                 quality, eval_every, plateau, cfg.mode, progress)
        run.finish(cleanup=[run_dir / "checkpoints"])  # the learngene is saved: free the disk
    return lg_dir


def _extract(run: Run, cfg: LearngeneConfig, ancestry: nn.Module, anc_path: Path, dataset: Dataset, data_desc: Any,
             sched: Schedule, settings: dict[str, Any], distill: Any, depths: list[int] | None,
             quality: Quality | None, eval_every: int, plateau: Plateau | None, mode: str, progress: bool) -> None:
    """Train the Aux-Net by KD in `run.dir/extract` and save the learngene to `run.dir/learngene`."""
    from ..data.collate import Collator
    from ..models.preprocess import transform_for
    from ..train.loop import train
    from .auxnet import build_auxnet
    from .distill import DepthSampledStep

    lg_dir, run_dir = run.dir / "learngene", run.dir / "extract"
    steps, batch_size, seed = sched.steps, sched.batch_size, sched.seed
    lg = Learngene(cfg, seed=seed, ancestry=ancestry)
    aux = build_auxnet(lg)
    tcfg = replace(sched, log_every=max(1, min(sched.log_every, steps // 10))).train_config(
        keep_checkpoints=2, eval_every=eval_every if quality is not None else 0)
    print(f"[extract] {mode} learngene ({lg.num_parameters():,} parameters, init {cfg.init}) from {anc_path}: "
          f"Aux-Net v{cfg.aux_depth_vision}/t{cfg.aux_depth_text}, up to {steps} steps of {batch_size}")
    resumed = had_checkpoint(run_dir)
    start = _start_quality(run_dir, aux, ancestry, quality, lg.fit_record)
    step_fn = distill.step(ancestry)
    if depths:
        step_fn = DepthSampledStep(step_fn, depths)
    with Timer() as t:
        train(aux, dataset, tcfg, run_dir, collate_fn=Collator(transform_for(aux.config), cfg.context),
              step_fn=step_fn, eval_fn=quality if quality is not None else None, until=plateau,
              resume="latest", progress=progress)
    log = read_log(run_dir / "log.jsonl")
    done_steps = next((r["step"] for r in log if r.get("stopped")), steps)
    stopped = done_steps < steps
    tokens = caption_tokens(dataset, cfg.context, batch_size, seed=seed)
    student_depths = depths or [None]
    student = sum(flops_per_sample(cfg.clip_config(d or cfg.aux_depth_vision, d or cfg.aux_depth_text), "clip",
                                   round(tokens)) for d in student_depths) \
        / len(student_depths)
    teacher = flops_per_sample(ancestry.config, "clip", round(tokens))
    samples = done_steps * batch_size
    provenance = {
        "method": "mmlg-extract", "ancestry": str(anc_path), "data": data_desc, "steps": done_steps,
        "step_budget": steps, "batch_size": batch_size, "samples_seen": samples, "kd": settings["kd"],
        "settings": settings, "init": cfg.init, "init_fit": start.get("fit"),
        "wall_time_s": round(t.seconds, 2), "resumed": resumed,
        "wall_time_note": "this session only, evaluation included" if resumed else "whole extraction, "
                                                                                    "evaluation included",
        "flops": {"student_forward_per_sample": student, "teacher_forward_per_sample": teacher,
                  "caption_tokens_per_sample": tokens, "total": samples * (3 * student + teacher),
                  "definition": "samples × (3 × Aux-Net forward + ancestry forward), cost.flops_per_sample"
                                + ("; Aux-Net forward averaged over the sampled depths" if depths else "")},
        "ancestry_parameters": count_params(ancestry)["total"],
        "reconstruction": "clipforge MM-LG is rebuilt from the paper's abstract and the TLEG/SWS lineage"}
    if quality is not None:
        curve = [[0, start["auxnet_step0"]]] + [
            [r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval/")}]
            for r in log if any(k.startswith("eval/") for k in r)]
        provenance["auxnet_quality"] = {
            "step0": start["auxnet_step0"], "final": curve[-1][1], "ancestry": start["ancestry"],
            "curve": curve, "data": quality.describe(), "stopped_early": stopped,
            "rule": plateau.describe() if plateau is not None else f"the step budget ({steps} steps)"}
    lg.save(lg_dir, provenance=provenance)
    print(f"[extract] saved {lg_dir} ({lg.num_parameters():,} parameters, {done_steps} steps"
          f"{' (plateau)' if stopped else ''}, {t.seconds:.0f} s)")


def _start_quality(run_dir: Path, aux: nn.Module, ancestry: nn.Module, quality: Quality | None,
                   fit: dict[str, Any] | None) -> dict[str, Any]:
    """The Aux-Net's quality before training and the ancestry's, measured once per run (kept in the run)."""
    from ..files import write_json

    path = run_dir / "start.json"
    if path.is_file():
        return json.loads(path.read_text())
    rec: dict[str, Any] = {"fit": fit}
    if quality is not None:
        rec["auxnet_step0"] = quality(aux, 0)
        rec["ancestry"] = quality(ancestry, 0)
        print(f"[extract] Aux-Net at step 0: {_brief_quality(rec['auxnet_step0'])}; ancestry: "
              f"{_brief_quality(rec['ancestry'])}")
    write_json(path, rec)
    return rec


def _brief_quality(q: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in q.items() if k in (MEAN_R1, "zeroshot_acc1"))
