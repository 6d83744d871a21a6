"""The MM-LG benchmark's units: one descendant pre-trained (with its downstream seeds), one extraction.

`Bench` holds what every unit shares (the ancestry, the fixed data pools, the unit records, the work
directory); `run.py` walks the phases over it. Each unit's record is written the moment it finishes
(`benchmarks.harness.Units`), and its model or learngene is kept under the work directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipforge.cost import Timer, caption_tokens
from clipforge.data.classification import FashionMNIST
from clipforge.data.collate import Collator
from clipforge.learngene import Distill, Learngene, LearngeneConfig, descend
from clipforge.learngene.extract import ExtractConfig, extract
from clipforge.learngene.pipeline import load_ancestry, pretrain
from clipforge.models.io import load, read_provenance, save
from clipforge.models.params import count_params
from clipforge.models.preprocess import transform_for
from clipforge.schedule import Schedule
from clipforge.train.plateau import Plateau
from clipforge.train.runs import read_log

from .. import harness
from . import data as D
from .budget import Budget
from .costs import flops_per_step, steps_for
from .methods import RECIPES, block_parameters, tower
from .tasks import SCORE, CurveEval, clip_retrieval, text_counting, vision_classification

NAME = "learngene"


class Bench:
    """The ancestry, the data pools and the unit records of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace, budget: Budget) -> None:
        self.b, self.work = budget, harness.work_dir(args, NAME)
        self.depths, self.seeds = list(budget.depths), list(budget.seeds)
        self.ancestry, self.anc_path = load_ancestry(harness.resolve_ancestry(args.ancestry, args.quick))
        self.recipe = harness.canonical_recipe(read_provenance(self.anc_path).get("recipe") or {})
        fixed = {k: v for k, v in budget.to_dict().items() if k != "seeds"}  # seeds only add downstream units
        harness.claim_work(self.work, NAME, {"budget": fixed, "ancestry": str(self.anc_path)}, args.overwrite)
        # The weights' digest, not only the recipe: the same recipe trains different weights on machines whose
        # kernels differ (fp32 vs bf16, sdpa vs eager attention), and units of two ancestries must not mix.
        self.weights = harness.ancestry_record(self.anc_path)["weights_sha256"]
        self.units = harness.Units(
            harness.out_dir(args, NAME) / "units",
            {"budget": fixed, "ancestry_recipe": self.recipe, "ancestry_weights": self.weights},
            canonical=lambda ident: {**ident,
                                     "ancestry_recipe": harness.canonical_recipe(ident.get("ancestry_recipe"))})
        self.lg_shape = LearngeneConfig.from_ancestry(self.ancestry.config, aux_depth_vision=budget.aux_depth,
                                                      aux_depth_text=budget.aux_depth)
        self.data_seconds = self._pools()

    def _pools(self) -> float:
        """Draw the fixed data pools once (every unit reads them); the seconds it took."""
        b, size = self.b, self.ancestry.config.vision_config.image_size
        with Timer() as t:
            self.pt = D.pretraining(b, size, self.recipe.get("caption_style", "alt"))
            self.ft_scenes = D.scenes("train", b.ft_scenes, 1, size)
            self.test_scenes = D.scenes("test", b.eval_scenes, 1, size)
            self.curve = CurveEval(D.scenes("test", b.curve_scenes, 3, size),
                                   FashionMNIST(split="test", limit=b.curve_fashion))
            self.classify = {name: D.classification(name, b) for name in ("fashion-mnist", "mnist")}
            self.text_test = D.scene_captions("test", b.text_test, 2)
            self.text_train = {s: D.scene_captions("train", b.text_train, 2 + s) for s in self.seeds}
        context = self.ancestry.config.text_config.max_position_embeddings
        self.tokens = caption_tokens(self.pt, context, b.batch_size, seed=0)
        collate = Collator(transform_for(self.ancestry.config), context)
        g = torch.Generator().manual_seed(0)
        self.probe = collate([self.pt[int(i)] for i in torch.randperm(len(self.pt), generator=g)[:b.batch_size]])
        print(f"[bench] data ready in {t.seconds:.0f} s: pre-training {len(self.pt):,} samples ({self.pt.name})",
              flush=True)
        return t.seconds

    def shape_of(self, depth: int) -> Any:
        """The `CLIPConfig` of a descendant of depths (depth, depth)."""
        return self.lg_shape.clip_config(depth, depth)

    def flops_per_step(self, depth: int, distils: bool) -> float:
        return flops_per_step(self.shape_of(depth), self.ancestry.config, self.tokens, self.b.batch_size, distils)

    def schedule(self, steps: int, sws: bool) -> Schedule:
        """SWS's recipe (lower lr, no warm-up) for ancestry-initialised runs, else 10 % warm-up."""
        lr, warmup = (self.b.kd_lr, 0) if sws else (self.b.lr, max(1, steps // 10))
        return Schedule(steps=steps, batch_size=self.b.batch_size, lr=lr, weight_decay=0.05, warmup=warmup, seed=0)

    # --- units ----------------------------------------------------------------------------------------

    def downstream(self, clip: torch.nn.Module, name: str, have: dict[str, Any]) -> dict[str, Any]:
        """The three downstream tasks per seed, for the seeds `have` lacks."""
        b, res = self.b, dict(have)
        for s in self.seeds:
            if str(s) in res:
                continue
            with Timer() as tu:
                r = {"clip": clip_retrieval(clip, self.ft_scenes, self.test_scenes, b, s,
                                            self.work / "downstream" / f"{name}-s{s}")}
                vision = tower(clip, "vision")
                for task, (train_ds, test_ds) in self.classify.items():
                    r[task.replace("-", "_")] = vision_classification(vision, train_ds, test_ds, b, s)
                r["text"] = text_counting(tower(clip, "text"), self.text_train[s], self.text_test, s)
            r["wall_time_s"] = round(tu.seconds, 2)
            res[str(s)] = r
        return res

    def run_unit(self, name: str, make: Callable[[], tuple[Any, dict]], steps: int, objective: Distill | None,
                 sws: bool, until: Plateau | None = None, evals: int | None = None) -> dict[str, Any]:
        """Pre-train one descendant (or reuse its record and weights), then its downstream seeds."""
        rec = self.units.get(name)
        model_dir = self.work / "models" / name
        if rec is not None and all(str(s) in rec["downstream"] for s in self.seeds):
            return rec
        if rec is not None and (model_dir / "config.json").is_file():
            clip = load(model_dir)
        else:
            clip, rec = self._pretrain(name, make, steps, objective, sws, until, evals)
            save(clip.cpu(), model_dir, provenance={**rec["init"], "pretrain": rec["pretrain"], "benchmark": NAME})
        rec["downstream"] = self.downstream(clip, name, rec["downstream"])
        return self.units.put(name, rec)

    def _pretrain(self, name: str, make: Callable[[], tuple[Any, dict]], steps: int, objective: Distill | None,
                  sws: bool, until: Plateau | None, evals: int | None) -> tuple[Any, dict[str, Any]]:
        """A fresh descendant pre-trained with its quality curve: (model, its record without downstream seeds)."""
        b = self.b
        model, init = make()
        step0 = self.curve(model)
        every = b.eval_every if evals is None else max(1, steps // evals)
        run_dir = self.work / "runs" / name
        pre = pretrain(model, self.pt, run_dir, training=self.schedule(steps, sws),
                       kd_from=self.ancestry if objective else None, distill=objective, eval_fn=self.curve,
                       eval_every=every, until=until, progress=False)
        evals_log = [r for r in read_log(run_dir / "log.jsonl") if any(k.startswith("eval/") for k in r)]
        return model, {"init": init, "pretrain": pre, "flops": pre["train_flops"], "wall_time_s": pre["wall_time_s"],
                       "steps": pre["steps_done"], "params": count_params(model)["total"],
                       "block_params": block_parameters(model),
                       "curve": [[0, step0]] + [[r["step"], {k[5:]: v for k, v in r.items() if k.startswith("eval/")}]
                                                for r in evals_log], "downstream": {}}

    def extraction(self, mode: str, recipe_name: str, budget_flops: float, need_weights: bool = False) -> dict:
        """The extraction's record; re-extracted (deterministically) only if the weights are needed and gone."""
        name = f"extract-{mode}-{recipe_name}"
        rec = self.units.get(name)
        lg_dir = self.learngene_dir(mode, recipe_name)
        if rec is not None and (not need_weights or (lg_dir / "learngene.json").is_file()):
            return rec
        b, r = self.b, RECIPES[recipe_name]
        dist, sampled = r["distill"], self.depths if r.get("sample_depths") else None
        per = sum(self.flops_per_step(dd, True) for dd in (sampled or [b.aux_depth])) / len(sampled or [b.aux_depth])
        steps = steps_for(budget_flops, per)
        cfg = ExtractConfig(mode=mode, stages=r.get("stages", 1), aux_depth_vision=b.aux_depth,
                            aux_depth_text=b.aux_depth, distill=dist, sample_depths=sampled,
                            schedule=Schedule(steps=steps, batch_size=b.batch_size, lr=b.lr, weight_decay=0.05,
                                              warmup=max(1, steps // 10), seed=0))
        lg_path = extract(self.anc_path, self.pt, lg_dir.parent, cfg, quality=self.curve, eval_every=b.eval_every,
                          plateau=Plateau(SCORE, b.plateau_patience, b.plateau_delta), progress=False)
        prov = json.loads((lg_path / "learngene.json").read_text())["provenance"]
        lg = Learngene.load(lg_path)
        step0 = {str(d): self.curve(descend(lg, d, d)) for d in self.depths}
        return self.units.put(name, {
            "mode": mode, "recipe": recipe_name, "stages": r.get("stages", 1), "flops": prov["flops"]["total"],
            "wall_time_s": prov["wall_time_s"],
            "steps": prov["steps"], "step_budget": prov["step_budget"], "auxnet_quality": prov["auxnet_quality"],
            "init": prov["init"], "init_fit": prov["init_fit"], "descendants_step0": step0,
            "selection_score": sum(v[SCORE] for v in step0.values()) / len(step0),
            "learngene_parameters": {"total": lg.num_parameters(),
                                     "blocks": sum(v for k, v in lg.parameter_breakdown().items()
                                                   if k.startswith("theta"))}})

    def learngene_dir(self, mode: str, recipe_name: str) -> Path:
        return self.work / "extract" / f"{mode}-{recipe_name}" / "learngene"


class Learngenes(dict):
    """The chosen recipe's learngenes, loaded on first use: a rerun whose learngene-method units are all
    recorded needs no weights."""

    def __init__(self, bench: Bench, recipe_name: str, budget_flops: float) -> None:
        super().__init__()
        self.bench, self.recipe_name, self.budget_flops = bench, recipe_name, budget_flops

    def __missing__(self, mode: str) -> Learngene:
        self.bench.extraction(mode, self.recipe_name, self.budget_flops, need_weights=True)
        self[mode] = Learngene.load(self.bench.learngene_dir(mode, self.recipe_name))
        return self[mode]
