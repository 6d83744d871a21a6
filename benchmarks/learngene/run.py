"""MM-LG benchmark: descendants of three depths from one trained ancestry, seven ways, three tasks.

    python benchmarks/learngene/run.py            # full: ≤ 60 min on 2 CPU cores (budgets in lgbench/budget.py)
    python benchmarks/learngene/run.py --quick    # smoke test (tiny ancestry, ≤ 5 min), used by the tests
    clipforge learngene bench [--quick]           # the same

Methods: MM-LG, Scratch, PT-FT, Heur-LG, Auto-LG, TLEG-per-tower, Shared-only (lgbench/methods.py).
Protocol: README.md beside this file, and written into results.md. Every unit of work (extraction,
pre-training of one method at one depth, downstream of one method, depth and seed) is saved under
--work as it finishes, so an interrupted run continues where it stopped; results are rebuilt from the
saved units at the end. Imports are kept inside functions: `clipforge learngene bench` loads this file
to build its parser, which must stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with `clipforge learngene bench`)."""
    p.add_argument("--quick", action="store_true", help="smoke test: tiny ancestry, depths 1-2, one seed (≤ 5 min)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/learngene/results, "
                                            "or results/quick with --quick)")
    p.add_argument("--work", type=Path, help="working directory for models and runs (default "
                                             "runs/bench-learngene[-quick])")
    p.add_argument("--ancestry", type=Path, help="ancestry model or `clipforge ancestry` run directory "
                                                 "(default: the cached demo ancestry, trained if missing, or "
                                                 "its quick variant with --quick; trained if missing)")
    p.add_argument("--seeds", type=int, help="number of downstream seeds (default 3, quick 1)")
    p.add_argument("--overwrite", "--force", dest="force", action="store_true",
                   help="discard a work directory made with another budget (alias --force)")


def _command(args: argparse.Namespace, prefix: str) -> str:
    parts = [prefix]
    if args.quick:
        parts.append("--quick")
    for name in ("out", "work", "ancestry", "seeds"):
        value = getattr(args, name, None)
        if value is not None:
            parts.append(f"--{name} {value}")
    return " ".join(parts)


def _resolve_ancestry(path: Path | None, quick: bool) -> Path:
    from clipforge.demo.ancestry import ensure_ancestry

    if path is not None and ((path / "config.json").is_file() or (path / "model" / "config.json").is_file()):
        return path
    return ensure_ancestry(path, quick=quick)


def _claim_work(work: Path, record: dict, force: bool) -> None:
    """The work directory is a run directory (clipforge.train.runs): another budget or ancestry is refused."""
    from clipforge.train.runs import claim

    claim(work, record, force, kind="bench learngene")


class Progress:
    """One line per unit of work, with the elapsed time and a naive ETA for the phase."""

    def __init__(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.t0 = phase, total, 0, time.perf_counter()

    def tick(self, what: str, skipped: bool = False) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        note = "cached" if skipped else f"{elapsed:.0f} s in phase, ~{eta:.0f} s left"
        print(f"[bench] {self.phase} {self.done}/{self.total} {what} ({note})", flush=True)


def run(args: argparse.Namespace, prefix: str = "clipforge learngene bench") -> int:
    """Run (or continue) the benchmark and write results.json, results.md and the PNGs."""
    import json
    import platform
    import shutil
    from dataclasses import replace

    import torch

    sys.path.insert(0, str(HERE))
    from lgbench import data as D
    from lgbench.budget import Budget
    from lgbench.costs import family_costs, steps_to_target
    from lgbench.methods import LEARNGENE_METHODS, METHODS, block_parameters, initialise, pretrain_steps, tower
    from lgbench.report import aggregate, bar_charts, curve_plot, markdown, write_text
    from lgbench.tasks import CurveEval, clip_retrieval, text_counting, vision_classification

    from clipforge.cost import Timer, count_params
    from clipforge.data.classification import FashionMNIST
    from clipforge.data.collate import Collator
    from clipforge.files import write_json
    from clipforge.learngene import Learngene
    from clipforge.learngene.pipeline import descend_family, extract, load_ancestry, pretrain, shape_name
    from clipforge.models.io import load, read_provenance, save
    from clipforge.models.preprocess import transform_for
    from clipforge.report.plots import read_log
    from clipforge.schedule import LEARNGENE_SCHEDULE

    t_start = time.perf_counter()
    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    work = args.work or Path("runs/bench-learngene-quick" if args.quick else "runs/bench-learngene")
    out = args.out or (HERE / "results" / "quick" if args.quick else HERE / "results")
    anc_dir = _resolve_ancestry(args.ancestry, args.quick)
    ancestry, anc_path = load_ancestry(anc_dir)
    # Seeds only add downstream units, so changing their number keeps every finished unit.
    claim = {k: v for k, v in budget.to_dict().items() if k != "seeds"}
    _claim_work(work, {"budget": claim, "ancestry": str(anc_path)}, args.force)
    depths, seeds, size = list(budget.depths), list(budget.seeds), ancestry.config.vision_config.image_size
    phases: dict[str, float] = {}

    with Timer() as t:  # fixed data pools, drawn once
        pt = D.pretraining(budget, size)
        ft_scenes = D.scenes("train", budget.ft_scenes, 1, size)
        test_scenes = D.scenes("test", budget.eval_scenes, 1, size)
        curve_eval = CurveEval(D.scenes("test", budget.curve_scenes, 3, size),
                               FashionMNIST(split="test", limit=budget.curve_fashion))
        classify = {name: D.classification(name, budget) for name in ("fashion-mnist", "mnist")}
        text_test = D.scene_captions("test", budget.text_test, 2)
        text_train = {s: D.scene_captions("train", budget.text_train, 2 + s) for s in seeds}
    phases["data pools"] = t.seconds
    print(f"[bench] data ready in {t.seconds:.0f} s: pre-training {len(pt):,} samples ({pt.name})", flush=True)

    def sched(steps: int):
        """The learngene schedule at this benchmark's batch, lr and `steps`."""
        return replace(LEARNGENE_SCHEDULE, steps=steps, batch_size=budget.batch_size, lr=budget.lr, seed=0)

    # 1. One extraction per learngene method, shared by every depth.
    lg_dirs, extractions = {}, {}
    with Timer() as t:
        prog = Progress("extract", len(LEARNGENE_METHODS))
        for m in LEARNGENE_METHODS:
            lg_dirs[m] = extract(anc_path, pt, work / "extract" / m, mode=m, aux_depth_vision=budget.aux_depth,
                                 aux_depth_text=budget.aux_depth, training=sched(budget.extract_steps),
                                 progress=False)
            prov = json.loads((lg_dirs[m] / "learngene.json").read_text())["provenance"]
            extractions[m] = {"flops": prov["flops"]["total"], "wall_time_s": prov["wall_time_s"]}
            prog.tick(m)
    phases["extraction"] = t.seconds
    learngenes = {m: Learngene.load(d) for m, d in lg_dirs.items()}
    lg_params = {m: {"total": lg.num_parameters(),
                     "blocks": sum(v for k, v in lg.parameter_breakdown().items() if k.startswith("theta"))}
                 for m, lg in learngenes.items()}
    collate = Collator(transform_for(ancestry.config), ancestry.config.text_config.max_position_embeddings)
    g = torch.Generator().manual_seed(0)
    probe = collate([pt[int(i)] for i in torch.randperm(len(pt), generator=g)[:budget.batch_size]])

    # 2. Pre-training: PT-FT P steps per depth, every other method p steps; curves along the way.
    pretrained: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    with Timer() as t:
        prog = Progress("pre-train", len(METHODS) * len(depths))
        for m in METHODS:
            for d in depths:
                unit_path = work / "pretrained" / m / f"d{d}.json"
                if unit_path.is_file():
                    pretrained[m][d] = json.loads(unit_path.read_text())
                    prog.tick(f"{m} depth {d}", skipped=True)
                    continue
                model, rec = initialise(m, d, learngenes=learngenes, ancestry=ancestry, k=budget.heur_k,
                                        probe_batch=probe, seed=0)
                step0 = curve_eval(model, 0)
                steps = pretrain_steps(m, budget.short_steps, budget.ptft_steps)
                every = max(1, steps // (budget.curve_evals if m == "ptft" else 2))
                name, root = shape_name(("clip", d, d)), work / "pretrained" / m
                run_dir = root / "_runs" / name
                if m in LEARNGENE_METHODS:  # the library path: descend + short pre-training, saved
                    model_dir = descend_family(lg_dirs[m], [("clip", d, d)], root, pretraining=sched(steps), data=pt,
                                               eval_fn=curve_eval, eval_every=every, progress=False)[name]
                    pre = read_provenance(model_dir)["pretrain"]
                else:
                    pre = pretrain(model, pt, run_dir, training=sched(steps), eval_fn=curve_eval, eval_every=every, progress=False)
                    model_dir = root / name
                    save(model.cpu(), model_dir, provenance={**rec, "pretrain": pre, "benchmark": "learngene"})
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                evals = [r for r in read_log(run_dir / "log.jsonl") if any(k.startswith("eval/") for k in r)]
                curve = [[0, step0]] + [[r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval/")}]
                                        for r in evals]
                unit = {"method": m, "depth": d, "init": rec, "pretrain": pre, "flops": pre["train_flops"],
                        "wall_time_s": pre["wall_time_s"], "params": count_params(model)["total"],
                        "block_params": block_parameters(model), "curve": curve, "model_dir": str(model_dir)}
                write_json(unit_path, unit)
                pretrained[m][d] = unit
                prog.tick(f"{m} depth {d}: {steps} steps, final R@1 {curve[-1][1]['scenes_mean_r1']:.3f}")
    phases["pre-training"] = t.seconds

    # 3. Downstream: (a) CLIP retrieval, (b) vision-only classification, (c) text-only counting.
    units = {}
    with Timer() as t:
        prog = Progress("downstream", len(METHODS) * len(depths) * len(seeds))
        for m in METHODS:
            for d in depths:
                clip = None
                for s in seeds:
                    path = work / "downstream" / f"{m}-d{d}-s{s}.json"
                    if path.is_file():
                        units[(m, d, s)] = json.loads(path.read_text())
                        prog.tick(f"{m} depth {d} seed {s}", skipped=True)
                        continue
                    if clip is None:
                        clip = load(pretrained[m][d]["model_dir"])
                    with Timer() as tu:
                        res = {"clip": clip_retrieval(clip, ft_scenes, test_scenes, budget, s,
                                                      work / "downstream" / "_runs" / f"{m}-d{d}-s{s}")}
                        vision = tower(clip, "vision")
                        for name, (train_ds, test_ds) in classify.items():
                            res[name.replace("-", "_")] = vision_classification(vision, train_ds, test_ds, budget, s)
                        res["text"] = text_counting(tower(clip, "text"), text_train[s], text_test, s)
                    res["wall_time_s"] = round(tu.seconds, 2)
                    write_json(path, res)
                    units[(m, d, s)] = res
                    prog.tick(f"{m} depth {d} seed {s}: R@1 {res['clip']['mean_r1']:.3f}, "
                              f"FMNIST {res['fashion_mnist']['acc1']:.3f}, text {res['text']['acc1']:.3f}")
    phases["downstream"] = t.seconds

    # 4. Results.
    anc_counts = count_params(ancestry)
    costs = family_costs(extractions, pretrained, lg_params,
                         {"total": anc_counts["total"], "blocks": block_parameters(ancestry)})
    curves = {m: {d: pretrained[m][d]["curve"] for d in depths} for m in METHODS}
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results = {
        "quick": bool(args.quick), "command": _command(args, prefix), "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": gpu or f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}",
        "budget": budget.to_dict(), "methods": list(METHODS),
        # Shown relative to the working directory: results files must not carry this machine's paths.
        "ancestry": {"path": os.path.relpath(anc_path), "params": anc_counts["total"],
                     "depth": ancestry.config.vision_config.num_hidden_layers},
        "protocol": protocol(budget), "definitions": definitions(),
        "downstream": aggregate(units, depths, seeds),
        "per_seed": {f"{m}/d{d}/s{s}": u for (m, d, s), u in units.items()},
        "costs": costs, "learngene_parameters": lg_params, "steps_to_target": steps_to_target(curves),
        "curves": {m: {str(d): c for d, c in v.items()} for m, v in curves.items()},
        "pretraining": {m: {str(d): {k: u[k] for k in ("flops", "wall_time_s", "params", "block_params")}
                            for d, u in v.items()} for m, v in pretrained.items()},
        "extractions": extractions, "phase_wall_time_s": phases,
    }
    results["wall_time_s"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    bar_charts(results, out)
    curve_plot(curves, depths, out / "curves.png")
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown(results))
    print(f"[bench] done in {results['wall_time_s'] / 60:.1f} min: {out / 'results.md'}")
    return 0


def protocol(b) -> list[str]:
    """The protocol, as sentences for results.md (numbers from the budget)."""
    d = ", ".join(str(x) for x in b.depths)
    return [
        f"Descendants are CLIPs of depth (d, d) for d in {{{d}}}, all with the ancestry's block shape; the "
        "vision-only and text-only descendants are their towers (for the learngene methods before pre-training "
        "this is exactly `descend(learngene, d, d, 'vision' | 'text')`).",
        f"Pre-training data: {b.pt_scenes} scenes (train split, seed 0, the ancestry's stream) + the first "
        f"{b.pt_fashion} Fashion-MNIST train images with prompt captions. Every pre-training run (extraction "
        f"included): AdamW lr {b.lr}, weight decay 0.05, batch {b.batch_size}, 10 % warm-up then cosine, seed 0.",
        f"Learngene methods (MM-LG, TLEG-per-tower, Shared-only): one extraction each, E = {b.extract_steps} steps "
        f"of pure KD (α = 1, τ = 1) from the frozen ancestry through an Aux-Net of depth {b.aux_depth} per tower "
        "(random init, linear schedule, one stage); shared by every depth, so its cost is counted once.",
        f"PT-FT: a full contrastive pre-training of P = {b.ptft_steps} steps per depth from random init. "
        f"Every other method (learngene descendants, Heur-LG, Auto-LG, and Scratch) gets the same short budget "
        f"p = {b.short_steps} steps per depth: Scratch is random init with that same p, so it shows what an "
        "initialisation is worth at equal budget (PT-FT is Scratch with the full budget).",
        f"Heur-LG / Auto-LG inherit k = {b.heur_k} ancestry blocks per tower (all blocks when the descendant is "
        "shallower); Auto-LG scores blocks by Block Influence on one pre-training batch.",
        f"(a) CLIP: contrastive fine-tuning on {b.ft_scenes} other train scenes (seed 1) for F = {b.ft_clip_steps} "
        f"steps (lr {b.ft_clip_lr}, batch {b.batch_size}), then retrieval R@1/5/10 both directions on "
        f"{b.eval_scenes} held-out test scenes (unseen shape-colour combinations).",
        f"(b) vision-only: `finetune_classifier` (tower + linear head, end to end) for V = {b.ft_vision_steps} "
        f"steps (lr {b.ft_vision_lr}, head ×10, batch {b.ft_vision_batch}) on {b.ft_vision_train} train images of "
        f"Fashion-MNIST and of MNIST (MNIST has 4,000), top-1 on {b.eval_classify} test images.",
        f"(c) text-only: object counting from the caption: linear probe (logistic regression) on frozen text "
        f"features of {b.text_train} train-scene captions predicts the object count (1-5) of {b.text_test} "
        "test-scene captions; top-1.",
        f"Pre-training runs once (seed 0). Seeds {list(b.seeds)} repeat the downstream stage only (fine-tuning "
        "batch order and head init, text-probe captions and validation split): the ± is fine-tuning noise, not "
        "initialisation noise. Mean ± sample std.",
        f"Curves: the CLIP descendant is evaluated before fine-tuning (held-out scenes mean R@1 on "
        f"{b.curve_scenes} scenes, Fashion-MNIST zero-shot on {b.curve_fashion}) at step 0 and every P/"
        f"{b.curve_evals} (PT-FT) or p/2 steps.",
    ]


def definitions() -> list[str]:
    """Storage and cost definitions, as written beside the table."""
    return [
        "Storage: parameters kept to produce every descendant (all depths, all modalities). Learngene methods: "
        "the learngene; PT-FT: the sum of its pre-trained CLIPs (towers included); Heur-LG / Auto-LG: the "
        "ancestry; Scratch: none. 'blocks only' counts transformer-block parameters alone, since the "
        "49,408-row token embedding sits in the learngene and in every descendant alike.",
        "Pre-training cost: FLOPs and wall time to bring the whole family to the start of fine-tuning. "
        "Learngene methods: one extraction + the short pre-training of each depth; PT-FT: its full pre-training "
        "of each depth; others: their short pre-training. The ancestry's own training is counted for no method. "
        "FLOPs are analytic (`clipforge.cost.flops_per_sample`: 2·matmul params·tokens + 4·T²·d per block; "
        "training = 3× forward, KD adds one ancestry forward; caption tokens as actually processed). Wall time "
        "is measured on this machine, evaluation excluded, data pools pre-rendered for every method alike.",
        "Ratios: storage = method / PT-FT; cost = PT-FT / method (how many times cheaper than PT-FT).",
    ]


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
