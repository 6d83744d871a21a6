"""The v2 protocol's units: each trains (or reads) one method at one seed, evaluates it, and leaves a small
committed record in `results/units/<name>.json` (`benchmarks.harness.Units`).

Units are independent of each other, so any number of processes can share a work directory: each takes the
next unit nobody holds (a POSIX lock on `work/claims/<name>.lock`, freed when its holder dies) and skips
those with a record. An interrupted unit resumes inside its run directory (`clipforge.run.Run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import harness
from .bench import Bench, Budget, file_lock

# the main table's methods, per seed: unit stem -> what its record calls the model(s)
FT = {"ffn-T": ("direct FT (FFN, T)", "ffn", "T"), "full-T": ("direct FT (full, T)", "full", "T"),
      "ffn-S": ("direct FT (FFN, S)", "ffn", "S"), "full-S": ("direct FT (full, S)", "full", "S")}
CLIP_MOE, BOUND, BASE_SCALE = "CLIP-MoE", "experts' embedding mean (bound)", "CLIP-MoE (base logit scale)"
UPCYCLING, WITHOUT_MCL = "sparse upcycling (T)", "w/o MCL (4 experts)"


@dataclass
class Unit:
    """One unit of work: `name` (its record's file), `weight` (its expected cost, for the order) and `run`."""

    name: str
    weight: float
    run: Callable[[Bench], dict[str, Any]]
    seed: int | None = None
    part: str = "main"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 1)


def _evaluated(bench: Bench, model_dir: Path) -> tuple[dict[str, Any], dict[str, Any], float]:
    from clipforge.models import io

    (rec, emb), s = _timed(lambda: bench.evaluate(io.load(model_dir)))
    return rec, emb, s


def ancestry_unit(bench: Bench) -> dict[str, Any]:
    """The ancestry: recipe, weights' digest, its own coverage check, the pool's caption lengths, the stretch."""
    import json

    rec = harness.ancestry_record(bench.ancestry)
    metrics = bench.ancestry.parent / "metrics.json"
    coverage = json.loads(metrics.read_text()).get("coverage") if metrics.is_file() else None
    from clipforge.models import io

    scale = float(io.load(bench.ancestry).logit_scale.detach().exp())
    return {**rec, "coverage": coverage, "stretch": bench.stretch_plan(), "logit_scale": scale}


def base_unit(bench: Bench) -> dict[str, Any]:
    """The base every method starts from (the stretched ancestry), and the ancestry as it was, for reference."""
    from clipforge.models import io

    emb, s = _timed(bench.base_embeddings)
    from . import evalset

    base = {"headline": evalset.metrics(emb, bench.evalset), "cost": evalset.costs(io.load(bench.base_dir()))}
    models = {"base": base}
    if io.read_provenance(bench.base_dir()).get("stretch", {}).get("factor", 1) > 1:
        models["ancestry (unstretched)"], _, _ = _evaluated(bench, bench.ancestry)
    es = bench.evalset
    items = {"retrieval": es.items("dense_t2i_r1"), "mmvp": es.items("mmvp_mean"), "fmnist": es.items("fmnist_acc1")}
    return {"models": models, "items": items, "eval_s": s}


def diag_unit(params: str, seed: int) -> Callable[[Bench], dict[str, Any]]:
    def run(bench: Bench) -> dict[str, Any]:
        name = f"diag/{params}/seed{seed}"
        model_dir, train_s = _timed(lambda: bench.direct_ft(name, seed, bench.b.diag_steps, params))
        rec, _, eval_s = _evaluated(bench, model_dir)
        return {"models": {f"FT {params}": rec}, "params": params, "steps": bench.b.diag_steps,
                "train_s": train_s, "eval_s": eval_s}
    return run


def ft_unit(stem: str, seed: int) -> Callable[[Bench], dict[str, Any]]:
    label, params, which = FT[stem]

    def run(bench: Bench) -> dict[str, Any]:
        steps = getattr(bench.b, which)
        model_dir, train_s = _timed(lambda: bench.direct_ft(f"ft/{stem}/seed{seed}", seed, steps, params))
        rec, _, eval_s = _evaluated(bench, model_dir)
        return {"models": {label: rec}, "steps": steps, "train_s": train_s, "eval_s": eval_s}
    return run


def stage_report(run: Path, experts: int) -> dict[str, Any]:
    """Per MCL stage: accumulated clusters, their sizes, the sampler's batches and drops, the steps taken."""
    from clipforge.models.io import read_provenance

    rep = {}
    for j in range(1, experts):
        prov = read_provenance(run / "mcl" / f"stage{j}" / "model")
        smp = prov.get("sampler", {})
        rep[f"stage{j}"] = {**prov.get("clusters", {}), "steps": prov.get("schedule", {}).get("steps"),
                            "global_batch": prov.get("schedule", {}).get("global_batch"),
                            "kept_batches": smp.get("kept", {}).get("batches"),
                            "kept_samples": smp.get("kept", {}).get("samples"),
                            "dropped_share": smp.get("dropped", {}).get("share")}
    return rep


def clip_moe_unit(seed: int) -> Callable[[Bench], dict[str, Any]]:
    """CLIP-MoE, its stage models (Table 1) and the experts' embedding mean (the bound); routing (Fig. 3)."""
    def run(bench: Bench) -> dict[str, Any]:
        from clipforge.data.scenes import ScenesDataset
        from clipforge.models import io
        from clipforge.moe.routing import routing_stats

        from . import evalset

        name = f"clip_moe/seed{seed}"
        model_dir, train_s = _timed(lambda: bench.dmu(name, seed, keep_stages=True))
        t = time.perf_counter()
        moe = io.load(model_dir)
        rec, _ = bench.evaluate(moe)
        models = {CLIP_MOE: rec}
        embs = [bench.base_embeddings()]
        for j in range(1, bench.b.experts):
            stage_rec, emb, _ = _evaluated(bench, bench.work / name / "mcl" / f"stage{j}" / "model")
            models[f"stage{j}"] = {"headline": stage_rec["headline"]}
            embs.append(emb)
        models[BOUND] = {"headline": evalset.metrics(evalset.ensemble(embs), bench.evalset)}
        routing = routing_stats(moe, ScenesDataset(split="test", size=bench.b.routing_scenes, seed=1,
                                                   image_size=bench.image_size))
        routing["seed"] = seed
        return {"models": models, "stages": stage_report(bench.work / name, bench.b.experts), "routing": routing,
                "train_s": train_s, "eval_s": round(time.perf_counter() - t, 1)}
    return run


def moe_unit(label: str, stem: str, seed: int, **kind: bool) -> Callable[[Bench], dict[str, Any]]:
    """A DMU variant (`kind`: Bench.dmu_config's switches) or sparse upcycling (`stem` "upcycling")."""
    def run(bench: Bench) -> dict[str, Any]:
        name = f"{stem}/seed{seed}"
        if stem == "upcycling":
            model_dir, train_s = _timed(lambda: bench.sparse_upcycling(name, seed))
        else:
            # stages kept: their provenance holds the steps and clusters the report shows
            model_dir, train_s = _timed(lambda: bench.dmu(name, seed, keep_stages=True, **kind))
        rec, _, eval_s = _evaluated(bench, model_dir)
        out = {"models": {label: rec}, "train_s": train_s, "eval_s": eval_s}
        if stem != "upcycling":
            out["stages"] = stage_report(bench.work / name, bench.b.experts)
        return out
    return run


# Seconds per sample of a training step (or of the embedding pass) at the budget's batch and stretched context,
# and per evaluation, on one thread: `python -m benchmarks.clipmoe.probe` measures them (results/probe.json);
# these defaults are its measurement on one AMD EPYC core under a load average of ~5 on 2 cores (README.md,
# "Sizing"). They order the units and predict wall times.
DEFAULT_COSTS = {"ffn": 0.0175, "full": 0.0241, "router": 0.0346, "upcycle": 0.0468, "embed": 0.0119,
                 "eval": 112.0, "eval_moe": 178.0}


def expected_seconds(b: Budget, c: dict[str, float] | None = None) -> dict[str, float]:
    """Every unit's expected wall time on one thread under per-sample costs `c` (default `DEFAULT_COSTS`).
    An MCL stage's epoch holds about N samples whatever its batches, so its cost is N samples."""
    c = {**DEFAULT_COSTS, **(c or {})}
    n, bt, e, ev, evm = b.pool, b.batch, b.stages, c["eval"], c["eval_moe"]
    routers = b.R * bt * c["router"]
    moe = e * n * (c["embed"] + c["ffn"]) + routers
    out = {"ancestry": 5.0, "base": 2 * ev}
    for s in b.seeds:
        out[f"clip_moe-seed{s}"] = moe + evm + e * ev
        out[f"upcycling-seed{s}"] = b.T * bt * c["upcycle"] + evm
        out[f"without_mcl-seed{s}"] = e * n * c["ffn"] + routers + evm
        for stem, (_, params, which) in FT.items():
            out[f"ft-{stem}-seed{s}"] = getattr(b, which) * bt * c[params] + ev
    for s in b.base_scale_seeds:
        out[f"clip_moe_base_scale-seed{s}"] = moe + evm
    for s in b.diag_seeds:
        for p in b.diag_params:
            out[f"diag-{p}-seed{s}"] = b.diag_steps * bt * c["full" if p in ("full", "ffn+attention") else "ffn"] + ev
    return out


def plan(b: Budget) -> list[Unit]:
    """Every unit of the protocol: the ancestry and the base first, then the longest first (processes sharing
    the work then finish at about the same time)."""
    units = [Unit("ancestry", 0.0, ancestry_unit, part="shared"), Unit("base", 0.0, base_unit, part="shared")]
    for s in b.seeds:
        units += [Unit(f"clip_moe-seed{s}", 0.0, clip_moe_unit(s), s),
                  Unit(f"upcycling-seed{s}", 0.0, moe_unit(UPCYCLING, "upcycling", s), s),
                  Unit(f"without_mcl-seed{s}", 0.0, moe_unit(WITHOUT_MCL, "without_mcl", s, one_cluster=True), s)]
        units += [Unit(f"ft-{stem}-seed{s}", 0.0, ft_unit(stem, s), s) for stem in FT]
    units += [Unit(f"clip_moe_base_scale-seed{s}", 0.0, moe_unit(BASE_SCALE, "clip_moe_base_scale", s,
                                                                 base_scale=True), s) for s in b.base_scale_seeds]
    units += [Unit(f"diag-{p}-seed{s}", 0.0, diag_unit(p, s), s, "diagnostic") for s in b.diag_seeds
              for p in b.diag_params]
    cost = expected_seconds(b)
    for u in units:
        u.weight = cost[u.name]
    return units[:2] + sorted(units[2:], key=lambda u: -u.weight)


def run_units(bench: Bench, units: list[Unit], records: harness.Units, info: dict[str, Any],
              wait_s: float = 20.0) -> list[str]:
    """Run every unit of `units` without a record that no other process holds; wait for those another holds.
    Returns the names this process ran."""
    import torch

    ran: list[str] = []
    claims = bench.work / "claims"
    while True:
        pending = [u for u in units if records.get(u.name) is None]
        if not pending:
            return ran
        took = False
        for i, u in enumerate(pending):
            with file_lock(claims / f"{u.name}.lock", block=False) as mine:
                if not mine or records.get(u.name) is not None:  # held by another, or finished meanwhile
                    continue
                took = True
                print(f"[bench] unit {u.name} ({i + 1} of {len(pending)} left)", flush=True)
                rec, wall = _timed(lambda u=u: u.run(bench))
                records.put(u.name, {**rec, "wall_time_s": wall, "threads": torch.get_num_threads(), **info})
                ran.append(u.name)
        if not took:
            print(f"[bench] waiting for {len(pending)} unit(s) another process holds", flush=True)
            time.sleep(wait_s)
