"""MM-LG benchmark, cost-matched: descendants of three depths from the demo ancestry, every method at the
same family FLOPs, against PT-FT pre-trained to a plateau.

    python benchmarks/learngene/run.py            # full (budgets in lgbench/budget.py); resumable units
    python benchmarks/learngene/run.py --quick    # smoke test (tiny ancestry, minutes), used by the tests
    clipforge learngene bench [--quick]           # the same

Phases: (1) PT-FT per depth to its plateau, whose FLOPs sum to C; (2) MM-LG extractions with each
recipe, the best (by its descendants' quality at step 0) also for TLEG-per-tower and Shared-only;
(3) every method at F = C / ratio and the `methods_at_c` at F = C, with the downstream tasks per seed.
Protocol: README.md beside this file, and written into results.md. Each finished unit is a committed
record under results/units/ (lgbench/units.py): rerun the same command to continue. Imports stay inside
functions: `clipforge learngene bench` loads this file to build its parser, which must stay fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with `clipforge learngene bench`)."""
    p.add_argument("--quick", action="store_true", help="smoke test: tiny ancestry, depths 1-2, one seed")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/learngene/results, "
                                            "or results/quick with --quick)")
    p.add_argument("--work", type=Path, help="working directory for models and runs (default "
                                             "runs/bench-learngene[-quick])")
    p.add_argument("--ancestry", type=Path, help="ancestry model or `clipforge ancestry` run directory "
                                                 "(default: the cached demo ancestry, or its quick variant with "
                                                 "--quick; trained if missing)")
    p.add_argument("--seeds", type=int, help="number of downstream seeds (default 3, quick 1)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--overwrite", "--force", dest="force", action="store_true",
                   help="discard a work directory made with another budget (alias --force)")


def _command(args: argparse.Namespace, prefix: str) -> str:
    parts = [prefix] + (["--quick"] if args.quick else [])
    for name in ("out", "work", "ancestry", "seeds", "threads"):
        if getattr(args, name, None) is not None:
            parts.append(f"--{name} {getattr(args, name)}")
    return " ".join(parts)


def _canonical_recipe(recipe: dict | None) -> dict:
    """An ancestry recipe in the current layout (older provenance wrote the schedule's fields flat)."""
    from dataclasses import asdict

    from clipforge.demo.ancestry import AncestryRecipe

    if not recipe:
        return {}
    try:
        return asdict(AncestryRecipe.from_record(recipe))
    except (TypeError, ValueError):
        return dict(recipe)


def _resolve_ancestry(path: Path | None, quick: bool) -> Path:
    from clipforge.demo.ancestry import ensure_ancestry

    if path is not None and ((path / "config.json").is_file() or (path / "model" / "config.json").is_file()):
        return path
    return ensure_ancestry(path, quick=quick)


def run(args: argparse.Namespace, prefix: str = "clipforge learngene bench") -> int:
    """Run (or continue) the benchmark and write results.json, results.md and the PNGs."""
    import platform
    from dataclasses import replace

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from lgbench import data as D
    from lgbench import report
    from lgbench.budget import Budget
    from lgbench.costs import depth_shares, family_cost, flops_per_step, steps_for, storage
    from lgbench.methods import (ALL, INHERIT_METHODS, LEARNGENE_METHODS, METHODS, RECIPES, block_parameters,
                                 initialise, pretrain_objective, tower, uses_sws_schedule)
    from lgbench.tasks import SCORE, CurveEval, clip_retrieval, text_counting, vision_classification
    from lgbench.units import Progress, Units

    from clipforge.cost import Timer, caption_tokens
    from clipforge.models.params import count_params
    from clipforge.data.classification import FashionMNIST
    from clipforge.data.collate import Collator
    from clipforge.learngene import Learngene, LearngeneConfig, descend
    from clipforge.files import file_digest
    from clipforge.learngene.pipeline import extract, load_ancestry, pretrain
    from clipforge.models.io import WEIGHTS, load, read_provenance, save
    from clipforge.models.preprocess import transform_for
    from clipforge.schedule import Schedule
    from clipforge.train.plateau import Plateau
    from clipforge.run import Run

    t_start = time.perf_counter()
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    work = args.work or Path("runs/bench-learngene-quick" if args.quick else "runs/bench-learngene")
    out = args.out or (HERE / "results" / "quick" if args.quick else HERE / "results")
    anc_dir = _resolve_ancestry(args.ancestry, args.quick)
    ancestry, anc_path = load_ancestry(anc_dir)
    recipe = _canonical_recipe(read_provenance(anc_path).get("recipe") or {})
    fixed = {k: v for k, v in budget.to_dict().items() if k != "seeds"}  # seeds only add downstream units
    Run(work, "bench learngene", {"budget": fixed, "ancestry": str(anc_path)}, overwrite=args.force).hold()
    # The weights' digest, not only the recipe: the same recipe trains different weights on machines whose
    # kernels differ (fp32 vs bf16, sdpa vs eager attention), and units of two ancestries must not mix.
    weights = file_digest(anc_path / WEIGHTS)
    units = Units(out / "units", {"budget": fixed, "ancestry_recipe": recipe, "ancestry_weights": weights},
                  canonical=lambda ident: {**ident, "ancestry_recipe": _canonical_recipe(ident.get("ancestry_recipe"))})
    b, depths, seeds = budget, list(budget.depths), list(budget.seeds)
    size = ancestry.config.vision_config.image_size
    lg_shape = LearngeneConfig.from_ancestry(ancestry.config, aux_depth_vision=b.aux_depth, aux_depth_text=b.aux_depth)
    phases: dict[str, float] = {}

    with Timer() as t:  # fixed data pools, drawn once
        pt = D.pretraining(b, size, recipe.get("caption_style", "alt"))
        ft_scenes = D.scenes("train", b.ft_scenes, 1, size)
        test_scenes = D.scenes("test", b.eval_scenes, 1, size)
        curve = CurveEval(D.scenes("test", b.curve_scenes, 3, size), FashionMNIST(split="test", limit=b.curve_fashion))
        classify = {name: D.classification(name, b) for name in ("fashion-mnist", "mnist")}
        text_test = D.scene_captions("test", b.text_test, 2)
        text_train = {s: D.scene_captions("train", b.text_train, 2 + s) for s in seeds}
    phases["data pools"] = t.seconds
    context = ancestry.config.text_config.max_position_embeddings
    tokens = caption_tokens(pt, context, b.batch_size, seed=0)
    collate = Collator(transform_for(ancestry.config), context)
    g = torch.Generator().manual_seed(0)
    probe = collate([pt[int(i)] for i in torch.randperm(len(pt), generator=g)[:b.batch_size]])
    print(f"[bench] data ready in {t.seconds:.0f} s: pre-training {len(pt):,} samples ({pt.name})", flush=True)

    def sched(steps: int, sws: bool) -> Schedule:
        lr, warmup = (b.kd_lr, 0) if sws else (b.lr, max(1, steps // 10))
        return Schedule(steps=steps, batch_size=b.batch_size, lr=lr, weight_decay=0.05, warmup=warmup, seed=0)

    def downstream(clip, name: str, have: dict) -> dict:
        res = dict(have)
        for s in seeds:
            if str(s) in res:
                continue
            with Timer() as tu:
                r = {"clip": clip_retrieval(clip, ft_scenes, test_scenes, b, s, work / "downstream" / f"{name}-s{s}")}
                vision = tower(clip, "vision")
                for task, (train_ds, test_ds) in classify.items():
                    r[task.replace("-", "_")] = vision_classification(vision, train_ds, test_ds, b, s)
                r["text"] = text_counting(tower(clip, "text"), text_train[s], text_test, s)
            r["wall_time_s"] = round(tu.seconds, 2)
            res[str(s)] = r
        return res

    def run_unit(name: str, make, steps: int, objective, sws: bool, until=None, evals: int | None = None) -> dict:
        """Pre-train one descendant (or reuse its record and weights), then its downstream seeds."""
        rec = units.get(name)
        model_dir = work / "models" / name
        if rec is not None and all(str(s) in rec["downstream"] for s in seeds):
            return rec
        if rec is not None and (model_dir / "config.json").is_file():
            clip = load(model_dir)
        else:
            model, init = make()
            step0 = curve(model)
            every = b.eval_every if evals is None else max(1, steps // evals)
            run_dir = work / "runs" / name
            pre = pretrain(model, pt, run_dir, training=sched(steps, sws), kd_from=ancestry if objective else None,
                           distill=objective, eval_fn=curve, eval_every=every, until=until, progress=False)
            from clipforge.report.plots import read_log

            evals_log = [r for r in read_log(run_dir / "log.jsonl") if any(k.startswith("eval/") for k in r)]
            rec = {"init": init, "pretrain": pre, "flops": pre["train_flops"], "wall_time_s": pre["wall_time_s"],
                   "steps": pre["steps_done"], "params": count_params(model)["total"],
                   "block_params": block_parameters(model),
                   "curve": [[0, step0]] + [[r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval/")}]
                                            for r in evals_log], "downstream": {}}
            save(model.cpu(), model_dir, provenance={**init, "pretrain": pre, "benchmark": "learngene"})
            clip = model
        rec["downstream"] = downstream(clip, name, rec["downstream"])
        return units.put(name, rec)

    # 1. PT-FT: every depth to its plateau; the FLOPs sum to C.
    ptft: dict[int, dict] = {}
    with Timer() as t:
        prog = Progress("PT-FT", len(depths))
        rule = Plateau(SCORE, b.plateau_patience, b.plateau_delta)
        for d in depths:
            name = f"ptft-d{d}"
            cached = units.has(name)
            ptft[d] = run_unit(name, lambda: initialise("ptft", d, learngenes={}, ancestry=ancestry,
                                                          shape_of=lambda dd: lg_shape.clip_config(dd, dd),
                                                          k=b.heur_k, probe_batch=probe),
                               b.ptft_max_steps, None, False, until=rule)
            prog.tick(f"depth {d}: {ptft[d]['steps']} steps, score {ptft[d]['curve'][-1][1][SCORE]:.3f}", cached)
    phases["PT-FT"] = t.seconds
    C = sum(u["flops"] for u in ptft.values())
    shares = depth_shares({d: u["flops"] for d, u in ptft.items()})
    points = {"C/ratio": C / b.ratio, "C": C}
    print(f"[bench] C = {C / 1e12:.2f} TFLOP (PT-FT family); F = C/{b.ratio} = {C / b.ratio / 1e12:.2f} TFLOP", flush=True)

    # 2. Extractions: MM-LG with every recipe, the best recipe for the other learngene methods.
    ext_flops = b.extract_share * C / b.ratio
    extractions: dict[str, dict] = {}

    def read_provenance_lg(lg_path: Path) -> dict:
        import json

        return json.loads((lg_path / "learngene.json").read_text())["provenance"]

    def extraction(mode: str, recipe_name: str, need_weights: bool = False) -> dict:
        """The extraction's record; re-extracted (deterministically) only if the weights are needed and gone."""
        name = f"extract-{mode}-{recipe_name}"
        rec = units.get(name)
        lg_dir = work / "extract" / f"{mode}-{recipe_name}" / "learngene"
        if rec is not None and (not need_weights or (lg_dir / "learngene.json").is_file()):
            return rec
        r = RECIPES[recipe_name]
        dist, sampled = r["distill"], depths if r.get("sample_depths") else None
        per = sum(flops_per_step(lg_shape.clip_config(dd, dd), ancestry.config, tokens, b.batch_size, True)
                  for dd in (sampled or [b.aux_depth])) / len(sampled or [b.aux_depth])
        lg_path = extract(anc_path, pt, lg_dir.parent, mode=mode, num_stages=r.get("stages", 1),
                          aux_depth_vision=b.aux_depth,
                          aux_depth_text=b.aux_depth, alpha=dist.alpha, beta=dist.beta, tau=dist.tau,
                          feature=dist.feature, tie_temperature=dist.tie_temperature, sample_depths=sampled,
                          quality=curve, eval_every=b.eval_every,
                          plateau=Plateau(SCORE, b.plateau_patience, b.plateau_delta),
                          training=Schedule(steps=steps_for(ext_flops, per), batch_size=b.batch_size, lr=b.lr,
                                            weight_decay=0.05, warmup=max(1, steps_for(ext_flops, per) // 10), seed=0),
                          progress=False)
        prov = read_provenance_lg(lg_path)
        lg = Learngene.load(lg_path)
        step0 = {str(d): curve(descend(lg, d, d)) for d in depths}
        return units.put(name, {
            "mode": mode, "recipe": recipe_name, "stages": r.get("stages", 1), "flops": prov["flops"]["total"], "wall_time_s": prov["wall_time_s"],
            "steps": prov["steps"], "step_budget": prov["step_budget"], "auxnet_quality": prov["auxnet_quality"],
            "init": prov["init"], "init_fit": prov["init_fit"], "descendants_step0": step0,
            "selection_score": sum(v[SCORE] for v in step0.values()) / len(step0),
            "learngene_parameters": {"total": lg.num_parameters(),
                                     "blocks": sum(v for k, v in lg.parameter_breakdown().items()
                                                   if k.startswith("theta"))}})

    with Timer() as t:
        prog = Progress("extract", len(b.recipes) + len(LEARNGENE_METHODS) - 1)
        for r in b.recipes:
            cached = units.has(f"extract-mmlg-{r}")
            extractions[f"mmlg/{r}"] = extraction("mmlg", r)
            prog.tick(f"mmlg {r}: {extractions[f'mmlg/{r}']['steps']} steps, descendants' score "
                      f"{extractions[f'mmlg/{r}']['selection_score']:.3f}", cached)
        best = max(b.recipes, key=lambda r: extractions[f"mmlg/{r}"]["selection_score"])
        print(f"[bench] extraction recipe: {best} (highest mean step-0 descendant score)", flush=True)
        for m in LEARNGENE_METHODS[1:]:
            cached = units.has(f"extract-{m}-{best}")
            extractions[f"{m}/{best}"] = extraction(m, best)
            prog.tick(f"{m} {best}", cached)
    phases["extraction"] = t.seconds
    chosen = {m: extractions[f"{m}/{best}"] for m in LEARNGENE_METHODS}

    class Learngenes(dict):
        """Loaded on first use: a rerun whose learngene-method units are all recorded needs no weights."""

        def __missing__(self, m: str) -> Learngene:
            extraction(m, best, need_weights=True)
            self[m] = Learngene.load(work / "extract" / f"{m}-{best}" / "learngene")
            return self[m]

    learngenes = Learngenes()

    # 3. Every method at F = C / ratio, the chosen ones at F = C.
    runs: dict[str, dict[str, dict[int, dict]]] = {p: {} for p in points}
    with Timer() as t:
        plan = [(p, m) for p in points for m in (METHODS if p == "C/ratio" else b.methods_at_c)]
        prog = Progress("runs", len(plan) * len(depths))
        for p, m in plan:
            objective, sws = pretrain_objective(m, b.fd_beta), uses_sws_schedule(m)
            avail = points[p] - (chosen[m]["flops"] if m in LEARNGENE_METHODS else 0)
            for d in depths:
                name = f"{m}-{'c' if p == 'C' else 'c-over-ratio'}-d{d}"
                per = flops_per_step(lg_shape.clip_config(d, d), ancestry.config, tokens, b.batch_size, bool(objective))
                steps = steps_for(max(avail, 0.0) * shares[d], per)
                cached = units.has(name)
                runs[p].setdefault(m, {})[d] = run_unit(
                    name, lambda m=m, d=d: initialise(m, d, learngenes=learngenes, ancestry=ancestry,
                                                      shape_of=lambda dd: lg_shape.clip_config(dd, dd), k=b.heur_k,
                                                      probe_batch=probe),
                    steps, objective, sws, evals=b.curve_points)
                prog.tick(f"{m} at {p}, depth {d}: {steps} steps", cached)
    phases["runs"] = t.seconds

    # 4. Results.
    anc_counts = count_params(ancestry)
    ptft_store = {"total": sum(u["params"] for u in ptft.values()), "blocks": sum(u["block_params"] for u in ptft.values())}
    lg_params = {m: chosen[m]["learngene_parameters"] for m in LEARNGENE_METHODS}
    anc_store = {"total": anc_counts["total"], "blocks": block_parameters(ancestry)}
    costs = {"PT-FT": {"ptft": family_cost("ptft", ptft, None)}}
    for p in points:
        costs[p] = {m: family_cost(m, r, chosen.get(m)) for m, r in runs[p].items()}
    stores = {m: storage(m, lg_params, ptft_store, anc_store) for m in ALL}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results = {
        "quick": bool(args.quick), "command": _command(args, prefix), "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": gpu or f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}",
        "budget": b.to_dict(), "C_flops": C, "points": points, "depth_shares": {str(d): v for d, v in shares.items()},
        "ancestry": {"recipe": recipe, "weights_sha256": weights, "params": anc_counts["total"],
                     "depth": ancestry.config.vision_config.num_hidden_layers, "quality": chosen["mmlg"]["auxnet_quality"]["ancestry"]},
        "ptft": {str(d): u for d, u in ptft.items()},
        "runs": {p: {m: {str(d): u for d, u in r.items()} for m, r in rp.items()} for p, rp in runs.items()},
        "extractions": extractions, "recipe": best, "costs": costs, "storage": stores,
        "phase_wall_time_s": phases, "units_reused": sorted(units.reused),
        "inherit_methods": list(INHERIT_METHODS), "learngene_methods": list(LEARNGENE_METHODS),
    }
    results["summary"] = report.summarise(results, depths, seeds)
    results["verdicts"] = report.verdicts(results)
    results["wall_time_s"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    report.write_all(results, out)
    for v in results["verdicts"]:
        print(v["line"])
    print(f"[bench] done in {results['wall_time_s'] / 60:.1f} min ({len(units.reused)} units from records): "
          f"{out / 'results.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from clipforge.errors import ClipforgeError

    try:
        return run(args, prefix="python benchmarks/learngene/run.py")
    except ClipforgeError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
