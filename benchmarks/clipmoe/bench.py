"""The CLIP-MoE benchmark's budget (v2) and its methods, each a resumable run directory under the work directory."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipforge.moe import sizing

# the diagnostic's parameter sets (clipforge.moe.baselines.PARAMS), in the order the table shows them
DIAG_PARAMS = ("ffn", "ffn+text_embeddings", "text_embeddings", "ffn+attention", "full")


@dataclass
class Budget:
    """Everything that sizes the benchmark (recorded in the results; README.md, "Sizing", says why)."""

    pool: int = 4096  # N: new scenes (train split, generator seed 1) with dense captions
    caption_style: str = "dense"
    batch: int = 32  # B, global
    experts: int = 4
    top_k: int = 2
    target_batches: float = 2.0  # per last-stage accumulated cluster (clipforge.moe.sizing; the released ratio)
    stage_lr: float = 1e-4
    ft_lr: float = 1e-4
    router_lr: float = 2e-3
    policy: str = "keep_remainder"
    cluster_order: str = "fixed"
    stretch_keep: int = 20  # Long-CLIP: rows kept as they are; the factor is measured on the pool's captions
    diag_steps: int = 210  # the diagnostic fine-tunes (issue 33: v1's T)
    diag_params: tuple[str, ...] = DIAG_PARAMS
    diag_seeds: tuple[int, ...] = (0, 1)
    seeds: tuple[int, ...] = (0, 1, 2)
    base_scale_seeds: tuple[int, ...] = (0, 1, 2)  # CLIP-MoE, logit scale fixed at the base's learned value
    eval_scenes: int = 5000
    eval_pairs: int = 500
    eval_fashion: int | None = None  # the whole 10k test split
    routing_scenes: int = 500
    kmeans_niter: int = 50

    @property
    def stages(self) -> int:
        return self.experts - 1

    @property
    def S(self) -> int:  # noqa: N802 - the paper's symbol
        """Data-matched steps: what one expert's stage saw (one epoch of the pool)."""
        return sizing.data_matched_steps(self.pool, self.batch)

    @property
    def R(self) -> int:  # noqa: N802
        """Router steps: one epoch of the pool."""
        return sizing.epoch_steps(self.pool, self.batch)

    @property
    def T(self) -> int:  # noqa: N802
        """Compute-matched steps: (E − 1)·S + R."""
        return sizing.compute_matched_steps(self.pool, self.batch, self.experts, self.R)

    @property
    def clusters(self) -> sizing.ClusterSizing:
        return sizing.size_clusters(self.pool, self.batch, self.stages, self.target_batches)

    def identity(self) -> dict[str, Any]:
        """What decides a unit's result: everything but which seeds run."""
        return {k: v for k, v in asdict(self).items() if k not in ("seeds", "diag_seeds", "base_scale_seeds")}

    def derived(self) -> dict[str, Any]:
        """The sizes the rules derive (written into the results)."""
        return {"S": self.S, "R": self.R, "T": self.T, "clusters": asdict(self.clusters)}

    @classmethod
    def quick(cls) -> Budget:
        """Toy sizes: the whole protocol in well under two minutes (tests/test_bench_clipmoe.py)."""
        return cls(pool=48, batch=16, experts=3, target_batches=1.0, stage_lr=1e-3, ft_lr=1e-3, router_lr=1e-2,
                   stretch_keep=8, diag_steps=2, diag_seeds=(0,), seeds=(0,), eval_scenes=32, eval_pairs=4,
                   eval_fashion=40, routing_scenes=8, kmeans_niter=5)


def stretch_factor(rows: int, keep: int, longest: int) -> int:
    """The smallest Long-CLIP factor whose table (keep + factor·(rows − keep)) holds `longest` tokens; 1 when
    `rows` already does (no stretch)."""
    if longest <= rows:
        return 1
    return math.ceil((longest - keep) / (rows - keep))


@contextlib.contextmanager
def file_lock(path: Path, block: bool = True) -> Iterator[bool]:
    """A POSIX record lock on `path` (freed when the holder dies); yields whether it was taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class Bench:
    """The methods on one ancestry; the pool, the stretched base and the evaluation sets are made on first use."""

    b: Budget
    ancestry: Path
    work: Path
    _cache: dict[str, Any] = field(default_factory=dict)

    # --- inputs -------------------------------------------------------------------------------------

    @property
    def data(self) -> Any:
        """The fine-tuning pool, rendered once per process."""
        if "data" not in self._cache:
            from clipforge.data.cached import Cached
            from clipforge.data.scenes import ScenesDataset

            b = self.b
            t = time.perf_counter()
            self._cache["data"] = Cached(ScenesDataset(split="train", size=b.pool, seed=1, image_size=self.image_size,
                                                       caption_style=b.caption_style),
                                         f"scenes[train,seed1,n{b.pool},{self.image_size}px,{b.caption_style}]")
            print(f"[bench] fine-tuning pool rendered in {time.perf_counter() - t:.0f} s", flush=True)
        return self._cache["data"]

    @property
    def image_size(self) -> int:
        from transformers import CLIPConfig

        return int(CLIPConfig.from_pretrained(self.ancestry).vision_config.image_size)

    def stretch_plan(self) -> dict[str, Any]:
        """The pool's caption lengths (tokens, untruncated, with bos and eos) against the ancestry's context,
        and the Long-CLIP stretch that holds the longest (none when the context already does)."""
        import numpy as np
        from transformers import CLIPConfig

        from clipforge.data.scenes import ScenesDataset
        from clipforge.models.tokenizer import get_tokenizer

        rows = int(CLIPConfig.from_pretrained(self.ancestry).text_config.max_position_embeddings)
        pool = ScenesDataset(split="train", size=self.b.pool, seed=1, caption_style=self.b.caption_style)
        caps = [c for i in range(len(pool)) for c in pool.captions_at(i)]
        lengths = np.array([len(x) for x in get_tokenizer()(caps, verbose=False)["input_ids"]])
        keep = min(self.b.stretch_keep, rows - 2)
        factor = stretch_factor(rows, keep, int(lengths.max()))
        ctx = keep + factor * (rows - keep) if factor > 1 else rows
        return {"context": rows, "captions": len(caps), "tokens_mean": float(lengths.mean()),
                "tokens_median": float(np.median(lengths)), "tokens_p99": float(np.percentile(lengths, 99)),
                "tokens_max": int(lengths.max()), "covered_by_context": float((lengths <= rows).mean()),
                "keep": keep, "factor": factor, "stretched_context": ctx,
                "covered_after": float((lengths <= ctx).mean())}

    def base_dir(self) -> Path:
        """The base every method starts from: the ancestry, its text positions Long-CLIP-stretched to the pool's
        longest caption when its context is shorter (made once, by whichever process comes first)."""
        out = self.work / "base" / "model"
        with file_lock(self.work / ".base.lock"):
            if not (out / "config.json").is_file():
                from clipforge.models import io
                from clipforge.models.positions import stretch_text_positions

                plan = self.stretch_plan()
                model = io.load(self.ancestry)
                if plan["factor"] > 1:
                    model = stretch_text_positions(model, plan["keep"], plan["factor"])
                io.save(model, out, provenance={"source": "benchmarks.clipmoe: the ancestry, stretched",
                                                "ancestry": str(self.ancestry), "stretch": plan})
        return out

    @property
    def evalset(self) -> Any:
        if "evalset" not in self._cache:
            from . import evalset

            b = self.b
            t = time.perf_counter()
            self._cache["evalset"] = evalset.build(b.eval_scenes, b.eval_pairs, b.eval_fashion, self.image_size)
            print(f"[bench] evaluation sets read in {time.perf_counter() - t:.0f} s", flush=True)
        return self._cache["evalset"]

    # --- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A model's record ({"headline", "cost"}) and its embeddings (for an ensemble)."""
        from . import evalset

        emb = evalset.embed(model, self.evalset)
        return {"headline": evalset.metrics(emb, self.evalset), "cost": evalset.costs(model)}, emb

    def base_embeddings(self) -> dict[str, Any]:
        """The base's embeddings, cached in the work directory (the experts' mean includes expert 0)."""
        import torch

        from clipforge.models import io

        path = self.work / "base" / "embeddings.pt"
        with file_lock(self.work / ".base_emb.lock"):
            if not path.is_file():
                _, emb = self.evaluate(io.load(self.base_dir()))
                torch.save(emb, path.with_suffix(".tmp"))
                os.replace(path.with_suffix(".tmp"), path)
        return torch.load(path, weights_only=True)

    # --- methods ------------------------------------------------------------------------------------

    def schedule(self, seed: int, steps: int | None, lr: float, **changes: Any) -> Any:
        """The released recipe's optimiser at this budget: one global batch, a 10 % warm-up."""
        from clipforge.moe.mcl import paper_schedule

        warm = max(1, (steps or self.b.S) // 10)
        return paper_schedule(steps=steps, lr=lr, batch_size=self.b.batch, warmup=warm, seed=seed, log_every=10,
                              **changes)

    def direct_ft(self, name: str, seed: int, steps: int, params: str) -> Path:
        """Direct fine-tuning of the base (`params`: one of clipforge.moe.baselines.PARAMS) for `steps` steps."""
        from clipforge.moe.baselines import FinetuneConfig, direct_ft

        run = self.work / name
        direct_ft(str(self.base_dir()), self.data, run,
                  FinetuneConfig(schedule=self.schedule(seed, steps, self.b.ft_lr), params=params), progress=False)
        return run / "model"

    def dmu_config(self, seed: int, base_scale: bool = False, one_cluster: bool = False) -> Any:
        """CLIP-MoE's DMU settings (`clipforge.moe.recipe.epoch_recipe`): stages and routers of one epoch each,
        clusters sized by clipforge.moe.sizing; `base_scale`: the logit scale fixed at the base's learned value,
        not 100; `one_cluster`: w/o MCL."""
        from clipforge.moe.baselines import without_mcl_config
        from clipforge.moe.recipe import epoch_recipe

        b = self.b
        cfg = epoch_recipe(self.base_dir(), b.pool, b.batch, experts=b.experts, top_k=b.top_k, stage_lr=b.stage_lr,
                           router_lr=b.router_lr, seed=seed, base_scale=base_scale, target_batches=b.target_batches,
                           policy=b.policy, cluster_order=b.cluster_order, kmeans_niter=b.kmeans_niter,
                           log_every=10)
        return without_mcl_config(cfg) if one_cluster else cfg

    def dmu(self, name: str, seed: int, keep_stages: bool, **kind: bool) -> Path:
        """A DMU run (`kind`: `dmu_config`'s switches) in `work/name`; its CLIP-MoE's directory."""
        from clipforge.moe.dmu import dmu

        return dmu(str(self.base_dir()), self.data, self.work / name, self.dmu_config(seed, **kind), progress=False,
                   keep_stages=keep_stages)

    def sparse_upcycling(self, name: str, seed: int) -> Path:
        """E copies of the base FFN as experts, experts and routers trained T steps."""
        from clipforge.moe.baselines import sparse_upcycling
        from clipforge.moe.routers import RouterConfig

        b = self.b
        cfg = RouterConfig(schedule=self.schedule(seed, b.T, b.ft_lr, weight_decay=0.01))
        sparse_upcycling(str(self.base_dir()), self.data, self.work / name, cfg, num_experts=b.experts, top_k=b.top_k,
                         progress=False)
        return self.work / name / "model"
