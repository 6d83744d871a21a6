"""The CLIP-MoE benchmark's budget and its units: every method at a seed, each a resumable run directory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clipforge.files import write_json


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
    def quick(cls) -> Budget:
        return cls(train_scenes=256, batch=32, experts=3, stage_steps=3, router_steps=2, stage_lr=1e-3,
                   ft_lr=1e-3, router_lr=1e-2, k=2, k_small=1, seeds=(0,), eval_scenes=64, eval_pairs=20,
                   eval_fashion=200,
                   ablation=(("k2 FFN", 2, 1, False), ("k3 FFN+attn", 3, 1, True)))


def wall_time(model_dir: Path) -> float:
    """The training wall time a unit recorded beside its model."""
    return json.loads((model_dir.parent / "wall_time.json").read_text())["wall_time_s"]


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
        """The built-in suite's headline (and the model's costs) for `model_dir`, cached beside its run."""
        from clipforge.cost import model_costs
        from clipforge.eval.suite import evaluate_builtin, headline
        from clipforge.models import io

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

    def base_eval(self) -> dict[str, Any]:
        """The ancestry's evaluation, cached in the work directory (the ancestry's may not be ours to write)."""
        from clipforge.cost import model_costs
        from clipforge.eval.suite import evaluate_builtin, headline

        path = self.work / "base" / "eval.json"
        if path.is_file():
            return json.loads(path.read_text())
        metrics = evaluate_builtin(self.base, self.suite)
        rec = {"model": str(self.ancestry), "headline": headline(metrics), "cost": model_costs(self.base)}
        write_json(path, rec)
        return rec

    def _timed(self, fn: Callable[[], Any], run_dir: Path) -> float:
        """Run `fn` and record its wall time once (a cached unit keeps the time it first took)."""
        path = run_dir / "wall_time.json"
        if path.is_file():  # written only after `fn` finished: the unit is done, nothing to load again
            return json.loads(path.read_text())["wall_time_s"]
        t = time.perf_counter()
        fn()
        s = round(time.perf_counter() - t, 1)
        write_json(path, {"wall_time_s": s})
        return s

    # --- methods ------------------------------------------------------------------------------------

    def direct_ft(self, name: str, seed: int, steps: int, params: str) -> Path:
        """Direct fine-tuning of the ancestry (`params`: "ffn", "full", "ffn+attention") for `steps` steps."""
        from clipforge.moe.baselines import FinetuneConfig, direct_ft

        run = self.work / name / f"seed{seed}"
        cfg = FinetuneConfig(schedule=self._schedule(seed, steps, self.b.ft_lr), params=params)
        self._timed(lambda: direct_ft(str(self.ancestry), self.data, run, cfg, progress=False), run)
        return run / "model"

    def _router_cfg(self, seed: int, steps: int, lr: float) -> Any:
        from clipforge.moe.routers import RouterConfig

        return RouterConfig(schedule=self._schedule(seed, steps, lr, weight_decay=0.01))

    def _schedule(self, seed: int, steps: int, lr: float, **changes: Any) -> Any:
        """The released recipe's schedule at this benchmark's budget: one batch, a 10 % warm-up."""
        from clipforge.moe.mcl import paper_schedule

        return paper_schedule(steps=steps, lr=lr, batch_size=self.b.batch, warmup=max(1, steps // 10), seed=seed,
                              log_every=5, **changes)

    def clip_moe(self, seed: int, k: int | None = None) -> Path:
        """CLIP-MoE by DMU: E - 1 MCL stages of S steps with k x k clusters, then R router steps."""
        from clipforge.moe.dmu import DMUConfig, dmu
        from clipforge.moe.mcl import MCLConfig

        b = self.b
        k = k or b.k
        run = self.work / ("clip_moe" if k == b.k else f"clip_moe_k{k}") / f"seed{seed}"
        cfg = DMUConfig(mcl=MCLConfig(num_experts=b.experts, k_img=k, k_txt=k, embed_batch_size=512,
                                      schedule=self._schedule(seed, b.stage_steps, b.stage_lr)),
                        router=self._router_cfg(seed, b.router_steps, b.router_lr), top_k=b.top_k)
        self._timed(lambda: dmu(str(self.ancestry), self.data, run, cfg, progress=False, keep_stages=True), run)
        return run / "model"

    def sparse_upcycling(self, seed: int) -> Path:
        """E copies of the base FFN as experts, experts and routers trained for T steps."""
        from clipforge.moe.baselines import sparse_upcycling

        b = self.b
        run = self.work / "sparse_upcycling" / f"seed{seed}"
        cfg = self._router_cfg(seed, b.total_steps, b.ft_lr)
        self._timed(lambda: sparse_upcycling(str(self.ancestry), self.data, run, cfg, num_experts=b.experts,
                                             top_k=b.top_k, progress=False), run)
        return run / "model"

    def without_mcl(self, seed: int, ft_dir: Path) -> Path:
        """The base and the direct-FT (FFN) model of `ft_dir` as two experts, routers trained R steps."""
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

        out = self.work / "ablation" / name.replace(" ", "_") / f"seed{seed}"
        if (out / "stage1" / "model" / "config.json").is_file():
            return out / "stage1" / "model"
        cfg = MCLConfig(num_experts=2, k_img=k, k_txt=k, train_attention=attention, embed_batch_size=512,
                        schedule=self._schedule(seed, steps, self.b.stage_lr))
        t = time.perf_counter()
        run_stage(str(self.ancestry), None, self.data, None, 1, cfg, out, resume="latest", progress=False)
        write_json(out / "stage1" / "wall_time.json", {"wall_time_s": round(time.perf_counter() - t, 1)})
        return out / "stage1" / "model"

    def cluster_report(self, run: Path) -> dict[str, Any]:
        """Per MCL stage: accumulated clusters, their sizes in global batches, the share dropped or merged."""
        from clipforge.models.io import read_provenance

        rep = {}
        for j in range(1, self.b.experts):
            prov = read_provenance(run / "mcl" / f"stage{j}" / "model")
            c, smp = prov.get("clusters", {}), prov.get("sampler", {})
            n = smp.get("kept", {}).get("samples", 0) + smp.get("dropped", {}).get("samples", 0)
            rep[f"stage{j}"] = {**c, "mean_batches_per_cluster": (n / max(1, c.get("num", 1))) / self.b.batch,
                                "dropped_share": smp.get("dropped", {}).get("share"),
                                "merged": smp.get("merged")}
        return rep
