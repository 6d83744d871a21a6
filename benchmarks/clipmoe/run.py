"""CLIP-MoE benchmark in the paper's regime: the alt-text ancestry fine-tuned on new dense-caption scenes.

The paper fine-tunes OpenAI's CLIP (trained on short web alt-text) on ShareGPT4V's long dense captions:
there direct fine-tuning raises retrieval and loses zero-shot ImageNet, and CLIP-MoE keeps both. Here the
demo ancestry trained on `alt` captions is fine-tuned on new scenes with `dense` captions (docs/methods.md
A.7); the same-distribution protocol of the first wave is kept as a control in results/same_distribution/.

    python benchmarks/clipmoe/run.py            # full (budgets below)
    python benchmarks/clipmoe/run.py --quick    # smoke test (tiny ancestry, one seed, minutes), used by the tests
    clipforge moe bench [--quick]               # the same

Main table (paper Tables 2, 4, 5), every method fine-tuned on the same held-out-seed scenes with the
same number of optimizer steps T = (E-1)·S + R and the same global batch:
  base, direct FT (FFN-only), direct FT (full), sparse upcycling (E copies, experts + routers trained),
  w/o MCL (2 experts: base + direct-FT FFN, routers R steps), CLIP-MoE (E-1 MCL stages of S steps, routers R).
Table 1: every dense MCL stage model's MMVP-style pair accuracy per attribute.
Ablation: one MCL stage against direct FT with the same steps and parameters, over cluster counts,
stage length and what MCL trains, with paired differences and their standard errors across seeds.
Fig. 3: routing heat map of the CLIP-MoE.

Every unit (a method at a seed) is a resumable run directory under --work; results are rebuilt from
the saved units, so an interrupted benchmark continues where it stopped. Imports stay inside
functions: `clipforge moe bench` loads this file to build its parser.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Budget:
    """Everything that sizes the benchmark (recorded in the results)."""

    # fine-tuning pool: new scenes (generator seed 1, never seen by the ancestry) with dense captions, no
    # Fashion-MNIST; the results report how full the last stage's accumulated clusters are.
    train_scenes: int = 16_000  # rendering dense scenes: ~13 s per 1,000 on one AMD EPYC core
    caption_style: str = "dense"
    batch: int = 64
    experts: int = 4
    top_k: int = 2
    stage_steps: int = 60  # S
    router_steps: int = 30  # R
    stage_lr: float = 1e-4
    ft_lr: float = 1e-4
    router_lr: float = 2e-3
    k: int = 3  # clusters per modality and stage (paper 3 x 3)
    k_small: int = 2  # a second CLIP-MoE with k_small x k_small clusters, sized for this pool
    seeds: tuple[int, ...] = (0, 1, 2)
    # evaluation
    eval_scenes: int = 1000
    eval_pairs: int = 200
    eval_fashion: int | None = None  # the whole 10k test split
    # ablation: (name, k, stage steps as a multiple of S, train attention); none in the paper regime
    ablation: tuple[tuple[str, int, int, bool], ...] = ()

    @property
    def total_steps(self) -> int:
        return (self.experts - 1) * self.stage_steps + self.router_steps

    @classmethod
    def quick(cls) -> "Budget":
        return cls(train_scenes=256, batch=32, experts=3, stage_steps=3, router_steps=2, stage_lr=1e-3,
                   ft_lr=1e-3, router_lr=1e-2, k=2, k_small=1, seeds=(0,), eval_scenes=64, eval_pairs=20,
                   eval_fashion=200,
                   ablation=(("k2 FFN", 2, 1, False), ("k3 FFN+attn", 3, 1, True)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with `clipforge moe bench`)."""
    p.add_argument("--quick", action="store_true", help="smoke test: tiny ancestry, one seed, toy budgets")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/clipmoe/results, or "
                                            "results/quick with --quick)")
    p.add_argument("--work", type=Path, help="models and runs (default runs/bench-clipmoe[-quick])")
    p.add_argument("--ancestry", type=Path, help="ancestry model or run directory (default: the cached demo ancestry, "
                                                 "its quick variant with --quick; trained if missing)")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3, quick 1)")
    p.add_argument("--seed", type=int, dest="only_seed",
                   help="run only this seed's units and write its unit record (two 1-thread processes, one per "
                        "seed, share --work); results are written by a run without --seed, which reuses the records")
    p.add_argument("--part", choices=["all", "main", "ablation"], default="all",
                   help="run only the main table's units or only the ablation's (two processes can share --work); "
                        "results are written by `all` (default), which reuses every finished unit")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; two 1-thread processes, one per "
                                               "--part, beat one 2-thread process on 2 cores for these small models)")
    p.add_argument("--overwrite", "--force", dest="force", action="store_true",
                   help="discard a work directory made with another budget (alias --force)")


def _command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/clipmoe/run.py"] + (["--quick"] if args.quick else [])
    for name in ("out", "work", "ancestry", "seeds", "threads"):
        if getattr(args, name, None) is not None:
            parts.append(f"--{name} {getattr(args, name)}")
    return " ".join(parts)


def _ancestry(path: Path | None, quick: bool) -> Path:
    from clipforge.demo.ancestry import ensure_ancestry

    for p in ([path] if path else []):
        if (p / "config.json").is_file():
            return p
        if (p / "model" / "config.json").is_file():
            return p / "model"
    return ensure_ancestry(path, quick=quick)


class Bench:
    """The benchmark's units, each cached in its own directory under `work`."""

    def __init__(self, budget: Budget, ancestry: Path, work: Path) -> None:
        from clipforge.data.cached import Cached
        from clipforge.data.scenes import ScenesDataset
        from clipforge.eval.suite import SuiteConfig
        from clipforge.models import io

        self.b, self.ancestry, self.work = budget, ancestry, work
        self.base = io.load(ancestry).eval()
        size = int(self.base.config.vision_config.image_size)
        t = time.perf_counter()
        self.data = Cached(ScenesDataset(split="train", size=budget.train_scenes, seed=1, image_size=size,
                                         caption_style=budget.caption_style),
                           f"scenes[train,seed1,n{budget.train_scenes},{size}px,{budget.caption_style}]")
        print(f"[bench] fine-tuning pool: {self.data.name} ({time.perf_counter() - t:.0f} s to render)", flush=True)
        self.suite = SuiteConfig(scenes=budget.eval_scenes, pairs=budget.eval_pairs, fashion=budget.eval_fashion)

    # --- evaluation, cached per model directory -----------------------------------------------------

    def evaluate(self, model_dir: Path, mmvp_only: bool = False) -> dict[str, Any]:
        from clipforge.files import write_json
        from clipforge.eval.suite import evaluate_builtin, headline
        from clipforge.models import io
        from clipforge.cost import model_costs

        path = model_dir.parent / ("eval_mmvp.json" if mmvp_only else "eval.json")
        if path.is_file():
            return json.loads(path.read_text())
        model = io.load(model_dir).eval()
        suite = replace(self.suite, tasks=("mmvp",)) if mmvp_only else self.suite
        t = time.perf_counter()
        metrics = evaluate_builtin(model, suite)
        rec = {"model": str(model_dir), "headline": headline(metrics), "eval_s": round(time.perf_counter() - t, 1)}
        if not mmvp_only:
            rec["cost"] = model_costs(model)
        write_json(path, rec)
        return rec

    def _timed(self, fn, run_dir: Path) -> float:
        """Run `fn` and record its wall time once (a cached unit keeps the time it first took)."""
        from clipforge.files import write_json

        path = run_dir / "wall_time.json"
        if path.is_file():  # written only after `fn` finished: the unit is done, nothing to load again
            return json.loads(path.read_text())["wall_time_s"]
        t = time.perf_counter()
        fn()
        s = round(time.perf_counter() - t, 1)
        write_json(path, {"wall_time_s": s})
        return s

    # --- methods ------------------------------------------------------------------------------------

    def _ft(self, name: str, seed: int, steps: int, params: str) -> Path:
        from clipforge.moe.baselines import FinetuneConfig, direct_ft

        b = self.b
        run = self.work / name / f"seed{seed}"
        cfg = FinetuneConfig(schedule=self._schedule(seed, steps, b.ft_lr), params=params)
        self._timed(lambda: direct_ft(str(self.ancestry), self.data, run, cfg, progress=False), run)
        return run / "model"

    def _router_cfg(self, seed: int, steps: int, lr: float):
        from clipforge.moe.routers import RouterConfig

        return RouterConfig(schedule=self._schedule(seed, steps, lr, weight_decay=0.01))

    def _schedule(self, seed: int, steps: int, lr: float, **changes):
        """The released recipe's schedule at this benchmark's budget: one batch, a 10 % warm-up."""
        from clipforge.moe.mcl import paper_schedule

        return paper_schedule(steps=steps, lr=lr, batch_size=self.b.batch, warmup=max(1, steps // 10), seed=seed,
                              log_every=5, **changes)

    def clip_moe(self, seed: int, k: int | None = None) -> Path:
        from clipforge.moe.dmu import DMUConfig, dmu
        from clipforge.moe.mcl import MCLConfig

        b = self.b
        k = k or b.k
        run = self.work / ("clip_moe" if k == b.k else f"clip_moe_k{k}") / f"seed{seed}"
        cfg = DMUConfig(mcl=MCLConfig(num_experts=b.experts, k_img=k, k_txt=k, embed_batch_size=512,
                                      schedule=self._schedule(seed, b.stage_steps, b.stage_lr)),
                        router=self._router_cfg(seed, b.router_steps, b.router_lr), top_k=b.top_k)
        self._timed(lambda: dmu(str(self.ancestry), self.data, run, cfg, suite=None, progress=False), run)
        return run / "model"

    def sparse_upcycling(self, seed: int) -> Path:
        from clipforge.moe.baselines import sparse_upcycling

        b = self.b
        run = self.work / "sparse_upcycling" / f"seed{seed}"
        cfg = self._router_cfg(seed, b.total_steps, b.ft_lr)
        self._timed(lambda: sparse_upcycling(str(self.ancestry), self.data, run, cfg, num_experts=b.experts,
                                             top_k=b.top_k, progress=False), run)
        return run / "model"

    def without_mcl(self, seed: int, ft_dir: Path) -> Path:
        from clipforge.moe.baselines import without_mcl

        b = self.b
        run = self.work / "without_mcl" / f"seed{seed}"
        cfg = self._router_cfg(seed, b.router_steps, b.router_lr)
        self._timed(lambda: without_mcl(str(self.ancestry), str(ft_dir), self.data, run, cfg, top_k=b.top_k,
                                        progress=False), run)
        return run / "model"

    def stage(self, name: str, seed: int, k: int, steps: int, attention: bool) -> Path:
        """One MCL stage (the dense stage-1 model) with these settings."""
        from clipforge.moe.mcl import MCLConfig, run_stage

        b = self.b
        out = self.work / "ablation" / name.replace(" ", "_") / f"seed{seed}"
        if (out / "stage1" / "model" / "config.json").is_file():
            return out / "stage1" / "model"
        cfg = MCLConfig(num_experts=2, k_img=k, k_txt=k, train_attention=attention, embed_batch_size=512,
                        schedule=self._schedule(seed, steps, b.stage_lr))
        t = time.perf_counter()
        run_stage(str(self.ancestry), None, self.data, None, 1, cfg, out, resume="latest", progress=False)
        from clipforge.files import write_json
        write_json(out / "stage1" / "wall_time.json", {"wall_time_s": round(time.perf_counter() - t, 1)})
        return out / "stage1" / "model"


def run(args: argparse.Namespace) -> int:
    import torch

    from clipforge.files import write_json
    from clipforge.run import Run

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    import cmreport

    budget = Budget.quick() if args.quick else Budget()
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    only = getattr(args, "only_seed", None)
    if only is not None and only not in budget.seeds:
        print(f"run.py: error: --seed {only} is not one of the budget's seeds {list(budget.seeds)} (see --seeds)",
              file=sys.stderr)
        return 2
    out = args.out or (HERE / "results" / "quick" if args.quick else HERE / "results")
    work = args.work or Path("runs/bench-clipmoe-quick" if args.quick else "runs/bench-clipmoe")
    ancestry = _ancestry(args.ancestry, args.quick)
    Run(work, "bench clipmoe", {"budget": asdict(budget) | {"seeds": None}, "ancestry": str(ancestry.resolve())},
        overwrite=args.force).hold()
    started = time.perf_counter()
    bench = Bench(budget, ancestry, work)
    b = budget
    units: dict[str, dict[int, dict[str, Any]]] = {}

    def record(method: str, seed: int, model_dir: Path, **extra: Any) -> None:
        units.setdefault(method, {})[seed] = {**bench.evaluate(model_dir), **extra}

    # The ancestry directory may not be ours to write into: evaluate the base into the work directory.
    base_eval = _base_eval(bench, work)
    identity = {"budget": asdict(budget) | {"seeds": None}, "ancestry": _ancestry_record(ancestry)}
    for seed in (b.seeds if args.part in ("all", "main") else ()):
        if only is not None and seed != only:
            continue
        saved = _load_seed(out, seed, identity)
        if saved is not None:  # a committed unit record: this seed is done (perhaps on another machine)
            print(f"[bench] seed {seed}: reusing {out / 'units' / f'seed{seed}.json'}", flush=True)
            for method, rec in saved.items():
                units.setdefault(method, {})[seed] = rec
            continue
        seed_t0 = time.perf_counter()
        for k, name in ((b.k, "CLIP-MoE"), (b.k_small, f"CLIP-MoE ({b.k_small}x{b.k_small})")):
            print(f"[bench] seed {seed}: {name} ({b.experts - 1} MCL stages x {b.stage_steps} steps, {k}x{k} "
                  f"clusters, + routers {b.router_steps})", flush=True)
            moe_dir = bench.clip_moe(seed, k)
            wall = json.loads((moe_dir.parent / "wall_time.json").read_text())["wall_time_s"]
            record(name, seed, moe_dir, wall_time_s=wall, clusters=_cluster_report(moe_dir.parent, b))
        moe_dir = bench.work / "clip_moe" / f"seed{seed}" / "model"
        for j in range(1, b.experts):
            units.setdefault(f"stage{j}", {})[seed] = bench.evaluate(
                moe_dir.parent / "mcl" / f"stage{j}" / "model", mmvp_only=True)
        print(f"[bench] seed {seed}: direct FT (FFN, full) {b.total_steps} steps", flush=True)
        for name, params in (("direct FT (FFN)", "ffn"), ("direct FT (full)", "full")):
            d = bench._ft(f"direct_ft_{params}", seed, b.total_steps, params)
            record(name, seed, d, wall_time_s=json.loads((d.parent / "wall_time.json").read_text())["wall_time_s"])
        print(f"[bench] seed {seed}: sparse upcycling, w/o MCL", flush=True)
        d = bench.sparse_upcycling(seed)
        record("sparse upcycling", seed, d, wall_time_s=json.loads((d.parent / "wall_time.json").read_text())["wall_time_s"])
        ft = bench.work / "direct_ft_ffn" / f"seed{seed}" / "model"
        d = bench.without_mcl(seed, ft)
        record("w/o MCL", seed, d, wall_time_s=json.loads((d.parent / "wall_time.json").read_text())["wall_time_s"])
        _save_seed(out, seed, identity, {m: per_seed[seed] for m, per_seed in units.items() if seed in per_seed},
                   {"wall_time_s": round(time.perf_counter() - seed_t0, 1), "threads": torch.get_num_threads(),
                    "command": _command(args)})
    ablation: dict[str, Any] = {}
    if args.part in ("all", "ablation") and only is None:
        for name, k, mult, attn in b.ablation:
            steps = b.stage_steps * mult
            params = "ffn+attention" if attn else "ffn"
            ref = f"direct FT ({params}, {steps} steps)"
            for seed in b.seeds:
                print(f"[bench] ablation {name}, seed {seed}", flush=True)
                main_stage = bench.work / "clip_moe" / f"seed{seed}" / "mcl" / "stage1" / "model"
                if k == b.k and mult == 1 and not attn and (main_stage / "config.json").is_file():
                    sdir = main_stage  # the same settings as the main run's stage 1: the same model
                else:
                    sdir = bench.stage(name, seed, k, steps, attn)
                rdir = bench._ft(f"ablation_ref/{params}_{steps}", seed, steps, params)
                ablation.setdefault(name, {"k": k, "steps": steps, "trains": params, "reference": ref,
                                           "stage": {}, "direct_ft": {}})
                ablation[name]["stage"][seed] = bench.evaluate(sdir)["headline"]
                ablation[name]["direct_ft"][seed] = bench.evaluate(rdir)["headline"]
    if args.part != "all" or only is not None:
        what = f"seed {only}" if only is not None else f"part {args.part}"
        print(f"[bench] {what} finished; run without --part / --seed to write the results", flush=True)
        return 0
    routing = cmreport.routing(budget, work, out)
    from clipforge.demo.ancestry import display_path

    seed_runs = {s: _seed_run(out, s) for s in b.seeds}
    results = cmreport.build(budget, units, base_eval, ablation, display_path(work), _command(args),
                             round(time.perf_counter() - started, 1), display_path(ancestry), routing=routing)
    results["seed_runs"] = seed_runs
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    cmreport.write_markdown(results, out / "results.md")
    cmreport.plots(results, work, out)
    print((out / "results.md").read_text())
    return 0


def _ancestry_record(ancestry: Path) -> dict[str, Any]:
    """What identifies the ancestry: its recipe and its weights' digest (the same recipe trains different
    weights where the kernels differ: fp32 or bf16, sdpa or eager attention)."""
    from clipforge.files import file_digest
    from clipforge.models.io import WEIGHTS, read_provenance

    prov = read_provenance(ancestry)
    return {"recipe": prov.get("recipe"), "name": prov.get("name"),
            "weights_sha256": file_digest(Path(ancestry) / WEIGHTS)}


def _load_seed(out: Path, seed: int, identity: dict[str, Any]) -> dict[str, Any] | None:
    from clipforge.run import normalise

    path = out / "units" / f"seed{seed}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return rec["units"] if rec.get("identity") == normalise(identity) else None


def _save_seed(out: Path, seed: int, identity: dict[str, Any], units: dict[str, Any], run: dict[str, Any]) -> None:
    """One small committed record per finished seed, so a later session redoes only the missing seeds; `run`
    says how it was made (wall time of the seed's units, evaluation included, threads, command)."""
    from clipforge.files import write_json
    from clipforge.run import normalise

    write_json(out / "units" / f"seed{seed}.json", {"identity": normalise(identity), "seed": seed, "units": units,
                                                    "run": run})


def _seed_run(out: Path, seed: int) -> dict[str, Any] | None:
    """How a seed's committed record was made (None for records written before it was kept)."""
    path = out / "units" / f"seed{seed}.json"
    return json.loads(path.read_text()).get("run") if path.is_file() else None


def _cluster_report(run: Path, b: Budget) -> dict[str, Any]:
    """Per MCL stage: accumulated clusters, their sizes in global batches, the share dropped or merged."""
    from clipforge.models.io import read_provenance

    rep = {}
    for j in range(1, b.experts):
        prov = read_provenance(run / "mcl" / f"stage{j}" / "model")
        c, smp = prov.get("clusters", {}), prov.get("sampler", {})
        n = smp.get("kept", {}).get("samples", 0) + smp.get("dropped", {}).get("samples", 0)
        rep[f"stage{j}"] = {**c, "mean_batches_per_cluster": (n / max(1, c.get("num", 1))) / b.batch,
                            "dropped_share": smp.get("dropped", {}).get("share"),
                            "merged": smp.get("merged")}
    return rep


def _base_eval(bench: Bench, work: Path) -> dict[str, Any]:
    from clipforge.files import write_json
    from clipforge.eval.suite import evaluate_builtin, headline
    from clipforge.cost import model_costs

    path = work / "base" / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    metrics = evaluate_builtin(bench.base, bench.suite)
    rec = {"model": str(bench.ancestry), "headline": headline(metrics), "cost": model_costs(bench.base)}
    write_json(path, rec)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
