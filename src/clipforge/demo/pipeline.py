"""`clipforge demo`: the whole story on built-in data, phase by phase, resumable.

ancestry (trained once, cached) → CLIP-MoE by DMU, and direct fine-tuning as its baseline → MM-LG
learngene (the recipe the learngene benchmark chose) → a family of descendants (CLIP at a quarter, half
and three quarters of the depth, vision-only, text-only) → Scratch at the middle descendant's training
FLOPs → (with `compose`) a CLIP-MoE grown from a descendant → every model measured the same way → one
report that opens with its verdicts.

Every phase writes its own directory under `out` and is skipped when already done with the same
settings, so an interrupted demo continues where it stopped. Progress: a line per phase with an
overall ETA, tqdm inside each training run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..eval.suite import SuiteConfig
from ..files import write_json


@dataclass
class DemoConfig:
    """The demo's budgets; `estimates` (seconds per phase on 2 CPU cores) drive the printed ETA."""

    quick: bool = False
    ancestry: str = ""  # the ancestry's run directory; "": in the user's cache (demo.ancestry.default_cache)
    train_scenes: int = 4_096  # fine-tuning pool for DMU: scenes seed 1 (unseen by the ancestry)
    # CLIP-MoE: "" is the epoch recipe (clipforge.moe.recipe, benchmarks/clipmoe's protocol v2: stages and
    # routers of one epoch, clusters sized to the pool, the base's logit scale); else a named preset.
    moe_preset: str = ""
    moe_batch: int = 32
    compose: bool = False  # also grow a CLIP-MoE from the middle descendant (the two methods composed)
    composed_stage_steps: int = 50
    composed_router_steps: int = 30
    # MM-LG: the learngene benchmark's recipe (its width-gap protocol, benchmarks/learngene/README.md):
    # learngene and descendants at `width_fraction` of the ancestry's widths in whole heads
    # (learngene.widths.narrow_width), least-squares init from the ancestry in `extract_stages` stages,
    # KD + feature term (alpha 1, beta 1), the Aux-Net's depth sampled over the family's depths;
    # descendants pre-trained by SWS's recipe (half KD, lr 2e-4, no warm-up).
    width_fraction: float = 2 / 3
    extract_stages: int = 4
    extract_steps: int = 300
    extract_batch: int = 64
    extract_beta: float = 1.0
    sample_depths: bool = True
    auxnet_eval_scenes: int = 300  # the Aux-Net measured at step 0, halfway and at the end (and the ancestry)
    auxnet_eval_fashion: int = 500
    pretrain_steps: int = 50
    pretrain_lr: float = 2e-4
    depth_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    # 5,000 test scenes and 500 pairs per attribute: R@1 near 10 % then has a binomial SE near 0.4 points
    suite: SuiteConfig = field(default_factory=lambda: SuiteConfig(scenes=5000, pairs=500))
    probe_train: int = 5000
    calibrate: bool = True  # time a few ancestry steps first and scale the estimates (demo.pace)
    # Seconds per phase of the reference from-nothing run (its demo.json `phases_s`, on the machine of
    # demo.pace.REFERENCE_STEP_S; docs/results.md, "The demo"); "composed" is set by `_composed`.
    estimates: dict[str, float] = field(default_factory=lambda: {
        "ancestry": 1226, "clip_moe": 140, "direct_ft": 128, "learngene": 149, "descendants": 88,
        "scratch": 45, "composed": 0, "evaluate": 514, "report": 112})

    def __post_init__(self) -> None:
        if self.compose and not self.estimates.get("composed"):
            self.estimates["composed"] = 30 if self.quick else 170

    @classmethod
    def quick_config(cls, compose: bool = False) -> DemoConfig:
        return cls(quick=True, train_scenes=128, moe_batch=8, compose=compose,
                   composed_stage_steps=2, composed_router_steps=2, extract_steps=4, extract_batch=16,
                   auxnet_eval_scenes=32, auxnet_eval_fashion=32,
                   pretrain_steps=2, depth_fractions=(0.5, 1.0), suite=SuiteConfig.quick(), probe_train=200,
                   calibrate=False,
                   # the reference machine's `clipforge demo --quick` phases
                   estimates={"ancestry": 4, "clip_moe": 2, "direct_ft": 1, "learngene": 1, "descendants": 1.5,
                              "scratch": 0.5, "composed": 0, "evaluate": 7, "report": 5})


class Progress:
    """Prints one line per phase with the overall ETA: the estimates left, scaled by the pace so far."""

    def __init__(self, estimates: dict[str, float]) -> None:
        self.estimates = dict(estimates)
        self.done: dict[str, float] = {}
        self.start = time.perf_counter()

    def run(self, name: str, title: str, fn: Callable[[], Any]) -> Any:
        names = list(self.estimates)
        i = names.index(name) + 1
        left = sum(v for k, v in self.estimates.items() if k not in self.done) * self.pace()
        print(f"[demo] phase {i}/{len(names)}: {title} (about {_mins(self.estimates[name])}; "
              f"about {_mins(left)} left in all)", flush=True)
        t = time.perf_counter()
        out = fn()
        self.done[name] = round(time.perf_counter() - t, 1)
        print(f"[demo] phase {i}/{len(names)} done in {_mins(self.done[name])}", flush=True)
        return out

    def pace(self) -> float:
        """Measured ÷ estimated time of the phases run so far (what the calibration missed shows in the first
        long phase), clamped to demo.pace.PACE_RANGE; 1 until a phase of 60 s or more has run."""
        from .pace import PACE_RANGE

        est = sum(self.estimates[k] for k in self.done if self.estimates[k] >= 60)
        took = sum(self.done[k] for k in self.done if self.estimates[k] >= 60)
        return min(PACE_RANGE[1], max(PACE_RANGE[0], took / est)) if est else 1.0


def _calibrate(progress: Progress) -> dict[str, float]:
    """Scale the estimates by this machine's pace (demo.pace) and say so."""
    from .pace import REFERENCE_STEP_S, machine_pace

    t = time.perf_counter()
    pace, step = machine_pace()
    progress.estimates = {k: v * pace for k, v in progress.estimates.items()}
    print(f"[demo] this machine: {step:.2f} s per ancestry training step, {REFERENCE_STEP_S:.2f} s where the "
          f"estimates were measured: pace {pace:.2f} ({time.perf_counter() - t:.0f} s to measure)", flush=True)
    return {"pace": round(pace, 3), "step_s": round(step, 3), "reference_step_s": REFERENCE_STEP_S}


def setup_seconds() -> float | None:
    """Seconds since `scripts/demo.sh` started (it sets $CLIPFORGE_DEMO_STARTED, Unix time, before the set-up),
    so that the first estimate and the final time cover the whole command; None when run directly."""
    import os

    try:
        spent = time.time() - float(os.environ["CLIPFORGE_DEMO_STARTED"])
    except (KeyError, ValueError):
        return None
    return spent if 0 <= spent < 86_400 else None


def _mins(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def _scenes(n: int, image_size: int, seed: int = 1):
    from ..data.cached import Cached
    from ..data.scenes import ScenesDataset

    return Cached(ScenesDataset(split="train", size=n, seed=seed, image_size=image_size),
                  f"scenes[train,seed{seed},n{n},{image_size}px]")


def run_demo(out: str | Path, cfg: DemoConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the demo into `out`; returns the report's paths and per-phase wall times.

    `out` is claimed like every run (`clipforge.run.Run`); a rerun redoes nothing its phases finished."""
    from ..run import Run

    cfg = cfg or DemoConfig()
    with Run(out, "demo", {"quick": cfg.quick}, inputs=[cfg.ancestry or None], overwrite=overwrite,
             artefact="report.html") as run:
        result = _demo(run.dir, cfg)
        run.finish()
    return result


def _demo(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Every phase of the demo into `out` (each skipped when already done)."""
    from ..learngene.widths import fraction_widths
    from ..models import io
    from .measure import measure

    progress = Progress({k: v for k, v in cfg.estimates.items() if k != "composed" or cfg.compose})
    pace = _calibrate(progress) if cfg.calibrate else None
    anc_run, cached, setup_s = _announce(out, cfg, progress)
    anc_dir = _ancestry(progress, cfg, anc_run)
    ancestry = io.load(anc_dir)
    size = int(ancestry.config.vision_config.image_size)
    L = int(ancestry.config.vision_config.num_hidden_layers)
    depths = sorted({max(1, round(f * L)) for f in cfg.depth_fractions})
    mid = depths[len(depths) // 2]

    data = _scenes(cfg.train_scenes, size)
    preset = moe_config(cfg, anc_dir)
    moe_dir, ft_dir = _grow(progress, out, anc_dir, data, preset)
    widths = fraction_widths(ancestry.config, cfg.width_fraction)
    lg_dir, family, shapes, lg_sched = _shrink(progress, cfg, out, anc_dir, size, depths, mid, widths)
    scratch_dir, compute = _scratch(progress, out, lg_dir, family, mid, len(shapes), lg_sched)
    compute["clip_moe"] = moe_plan(preset, len(data))
    compute["widths"] = {"ancestry": {t: int(getattr(ancestry.config, f"{t}_config").hidden_size)
                                      for t in ("vision", "text")}, "learngene": widths}

    members = {"ancestry": anc_dir, "CLIP-MoE": moe_dir, "direct FT (full)": ft_dir}
    members |= {f"MM-LG clip {d}+{d}": family[f"clip-v{d}-t{d}"] for d in depths}
    members |= {f"Scratch clip {mid}+{mid}": scratch_dir}
    members |= {f"MM-LG vision {mid}": family[f"vision-v{mid}"], f"MM-LG text {mid}": family[f"text-t{mid}"]}
    if cfg.compose:
        composed_cfg = _composed(preset, cfg)
        seed_dir = family[f"clip-v{mid}-t{mid}"]
        members[f"CLIP-MoE of MM-LG clip {mid}+{mid}"] = progress.run(
            "composed", f"CLIP-MoE grown from the MM-LG descendant clip-v{mid}-t{mid}",
            lambda: _dmu(seed_dir, data, out / "clip_moe_from_descendant", composed_cfg))
    records = progress.run("evaluate", f"measuring {len(members)} models on the same tasks", lambda: {
        name: measure(name, Path(d), cfg.suite, out / "eval", cfg.probe_train) for name, d in members.items()})
    return _finish(progress, out, cfg, records, members, compute, pace=pace, setup_s=setup_s, anc_run=anc_run,
                   cached=cached, anc_dir=anc_dir, moe_dir=moe_dir, lg_dir=lg_dir)


def rewrite_report(out: str | Path) -> tuple[Path, Path]:
    """Write a finished demo's report.md and report.html again from its own records (demo.json, eval/*.json):
    what a newer clipforge's report and verdict rules say about the same run, without training anything."""
    import json

    from ..errors import ClipforgeError
    from ..run import Run
    from .measure import measure
    from .report import write_report

    out = Path(out)
    path = out / "demo.json"
    if not path.is_file():
        raise ClipforgeError(f"--out {out}: no demo.json, not a finished demo; run `clipforge demo --out {out}`")
    d = json.loads(path.read_text())
    c = d["config"]
    cfg = DemoConfig(**{**c, "suite": SuiteConfig(**c["suite"]), "depth_fractions": tuple(c["depth_fractions"])})
    with Run(out, "demo", {"quick": cfg.quick}, artefact="report.html") as run:
        if not run.done:
            raise ClipforgeError(f"--out {out}: the demo there has not finished; rerun `clipforge demo --out {out}`")
        models = {name: Path(p) for name, p in d["models"].items()}
        records = {name: measure(name, p, cfg.suite, out / "eval", cfg.probe_train) for name, p in models.items()}
        lg = d.get("learngene") or (out / "learngene" / "learngene" if (out / "learngene" / "learngene").is_dir()
                                    else None)  # a demo.json from before it recorded the learngene
        return write_report(out, records, d["phases_s"], cfg, Path(cfg.ancestry), d["ancestry_was_cached"],
                            ancestry_dir=models["ancestry"], moe_dir=models["CLIP-MoE"],
                            lg_dir=Path(lg) if lg else None, compute=d.get("compute"), threads=d.get("threads"))


def _announce(out: Path, cfg: DemoConfig, progress: Progress) -> tuple[Path, bool, float | None]:
    """Say where the ancestry comes from and how long this run should take; (ancestry run, cached?, set-up s)."""
    from .ancestry import ancestry_run_dir

    anc_run = Path(cfg.ancestry) if cfg.ancestry else ancestry_run_dir(quick=cfg.quick)
    cached = (anc_run / "model" / "config.json").is_file()
    if not cached:
        print(f"[demo] no cached ancestry in {anc_run}: this first run trains it there "
              f"(about {_mins(progress.estimates['ancestry'])} on this machine); later runs reuse it "
              f"(another cache: --cache DIR or $CLIPFORGE_CACHE)", flush=True)
    else:
        progress.estimates["ancestry"] = 1  # loading it
        print(f"[demo] using the cached ancestry in {anc_run}", flush=True)
    setup_s = setup_seconds()
    setup = f" (+ {_mins(setup_s)} of set-up so far: about {_mins(setup_s + sum(progress.estimates.values()))} " \
            f"in all)" if setup_s is not None else ""
    print(f"[demo] this run: about {_mins(sum(progress.estimates.values()))} on this machine{setup}, into {out}",
          flush=True)
    return anc_run, cached, setup_s


def _ancestry(progress: Progress, cfg: DemoConfig, anc_run: Path) -> Path:
    """Phase 1: the ancestry's model directory (trained into `anc_run`, or found there)."""
    from .ancestry import AncestryRecipe, train_ancestry

    recipe = AncestryRecipe.quick() if cfg.quick else AncestryRecipe()
    return progress.run("ancestry", "the ancestry CLIP (trained once, then cached)",
                        lambda: train_ancestry(anc_run, recipe))


def moe_config(cfg: DemoConfig, anc_dir: Path) -> Any:
    """The demo's DMU settings: the epoch recipe on its pool (default), or the named preset."""
    from ..moe.presets import presets
    from ..moe.recipe import epoch_recipe

    if cfg.moe_preset:
        return presets()[cfg.moe_preset]
    return epoch_recipe(anc_dir, cfg.train_scenes, cfg.moe_batch)


def moe_plan(preset: Any, num_samples: int) -> dict[str, Any]:
    """What DMU trains, for the report: stages, steps (an epoch resolved to steps), the baseline's steps."""
    from ..moe.recipe import total_steps
    from ..moe.sizing import epoch_steps

    m, r = preset.mcl.schedule, preset.router.schedule
    return {"stages": preset.mcl.num_experts - 1, "batch": m.batch_size,
            "stage_steps": f"{m.steps} steps" if m.steps else
            f"one epoch (about {epoch_steps(num_samples, m.batch_size)} steps)",
            "router_steps": r.steps or epoch_steps(num_samples, r.batch_size),
            "total_steps": total_steps(preset, num_samples), "clusters": f"{preset.mcl.k_img}×{preset.mcl.k_txt}",
            "logit_scale": m.fixed_logit_scale}


def _dmu(base: Path, data: Any, out: Path, preset: Any) -> Path:
    """DMU from `base` into `out`, without the built-in evaluation (the demo measures every model itself)."""
    from ..moe.dmu import dmu

    return dmu(str(base), data, out, preset)


def _grow(progress: Progress, out: Path, anc_dir: Path, data: Any, preset: Any) -> tuple[Path, Path]:
    """Grow: CLIP-MoE by DMU, and direct fine-tuning as its baseline; their model directories."""
    from .baselines import direct_ft_baseline

    moe_dir = progress.run("clip_moe", f"CLIP-MoE by DMU ({preset.mcl.num_experts} experts, top-{preset.top_k})",
                           lambda: _dmu(anc_dir, data, out / "clip_moe", preset))
    ft_dir = progress.run("direct_ft", "baseline: direct fine-tuning of the whole ancestry, as many steps as DMU",
                          lambda: direct_ft_baseline(anc_dir, data, out / "direct_ft", preset, len(data)))
    return moe_dir, ft_dir


def _shrink(progress: Progress, cfg: DemoConfig, out: Path, anc_dir: Path, size: int, depths: list[int],
            mid: int, widths: dict[str, int]) -> tuple[Path, dict[str, Path], list[str], Any]:
    """Shrink / reshape: the MM-LG learngene at `widths`, then its family (at the learngene's widths);
    (learngene, family, shapes, schedule)."""
    from ..learngene.distill import Distill
    from ..learngene.extract import ExtractConfig, extract
    from ..learngene.pipeline import descend_family
    from ..learngene.quality import Quality
    from ..schedule import LEARNGENE_SCHEDULE

    lg_sched = replace(LEARNGENE_SCHEDULE, batch_size=cfg.extract_batch)
    quality = Quality.builtin(size, scenes=cfg.auxnet_eval_scenes, fashion=cfg.auxnet_eval_fashion)
    lg_dir = progress.run("learngene", "MM-LG learngene extraction (least-squares init, KD + feature term)",
                          lambda: extract(anc_dir, ["scenes", "fashion-mnist"], out / "learngene", ExtractConfig(
                              aux_depth_vision=mid, aux_depth_text=mid, stages=cfg.extract_stages,
                              width_vision=widths["vision"], width_text=widths["text"],
                              distill=Distill(alpha=1.0, beta=cfg.extract_beta),
                              sample_depths=depths if cfg.sample_depths else None,
                              schedule=replace(lg_sched, steps=cfg.extract_steps)),
                              quality=quality, eval_every=max(1, cfg.extract_steps // 2)))
    shapes = [f"clip:{d}:{d}" for d in depths] + [f"vision:{mid}", f"text:{mid}"]
    sws = replace(lg_sched, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, warmup=0)  # SWS: lower lr, no warm-up
    family = progress.run("descendants", f"descendants {', '.join(shapes)}", lambda: descend_family(
        lg_dir, shapes, out / "descendants", pretraining=sws, data=["scenes", "fashion-mnist"], kd_from=anc_dir))
    return lg_dir, family, shapes, lg_sched


def _scratch(progress: Progress, out: Path, lg_dir: Path, family: dict[str, Path], mid: int, family_size: int,
             lg_sched: Any) -> tuple[Path, dict[str, Any]]:
    """The Scratch baseline at the middle descendant's training FLOPs; (its directory, the compute record)."""
    from .baselines import descendant_flops, scratch_baseline

    seed_name = f"clip-v{mid}-t{mid}"
    budget = descendant_flops(lg_dir, family[seed_name], family_size=family_size)
    scratch_dir, scratch_pre = progress.run(
        "scratch", f"baseline: Scratch {mid}+{mid} at the MM-LG descendant's training FLOPs "
                   f"({budget['total'] / 1e12:.2f} TFLOP)",
        lambda: scratch_baseline(family[seed_name], budget, ["scenes", "fashion-mnist"], out / "scratch",
                                 lg_sched))
    compute = {"scratch": {"budget_flops": budget, "steps": scratch_pre["steps_done"],
                           "train_flops": scratch_pre["train_flops"], "of": f"MM-LG clip {mid}+{mid}"}}
    return scratch_dir, compute


def _finish(progress: Progress, out: Path, cfg: DemoConfig, records: dict[str, Any], members: dict[str, Path],
            compute: dict[str, Any], *, pace: dict[str, float] | None, setup_s: float | None, anc_run: Path,
            cached: bool, anc_dir: Path, moe_dir: Path, lg_dir: Path) -> dict[str, Any]:
    """The report phase, then demo.json (settings, times, models) and the closing line."""
    from .report import write_report

    phases = dict(progress.done)
    paths = progress.run("report", "writing report.md and report.html", lambda: write_report(
        out, records, phases, cfg, anc_run, cached, ancestry_dir=anc_dir, moe_dir=moe_dir, lg_dir=lg_dir,
        compute=compute))
    phases["report"] = progress.done["report"]
    import torch

    write_json(out / "demo.json", {"config": asdict(cfg), "phases_s": phases, "ancestry_was_cached": cached,
                                   "threads": torch.get_num_threads(), "learngene": str(lg_dir),
                                   "pace": pace, "estimated_s": progress.estimates, "setup_s": setup_s,
                                   "models": {k: str(v) for k, v in members.items()}, "compute": compute,
                                   "report": [str(p) for p in paths]})
    total = sum(v for k, v in phases.items() if k != "ancestry")
    since = setup_seconds()
    whole = f"; {_mins(since)} since scripts/demo.sh started" if since is not None else ""
    print(f"[demo] done: {paths[1]} ({_mins(total)} without the ancestry{whole})", flush=True)
    return {"report": paths, "phases_s": phases}


def _composed(preset, cfg: DemoConfig):
    def short(s, steps: int):
        return replace(s, steps=steps, warmup=max(1, steps // 10))

    mcl = replace(preset.mcl, schedule=short(preset.mcl.schedule, cfg.composed_stage_steps))
    router = replace(preset.router, schedule=short(preset.router.schedule, cfg.composed_router_steps))
    return replace(preset, mcl=mcl, router=router)

