"""The MM-LG benchmark's units: one family member pre-trained (with its downstream seeds), one extraction.

`Bench` holds what every unit shares (the ancestry, the family's shapes, the fixed data pools, the unit
records, the work directory); `run.py` walks the phases over it. A member's record is written when its
pre-training ends and again after each downstream seed (`benchmarks.harness.Units`), and its model is kept
under the work directory until its last seed is done, so an interrupted run continues at the next seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipforge.cost import Timer, caption_tokens
from clipforge.data.classification import FashionMNIST
from clipforge.data.collate import Collator
from clipforge.errors import ClipforgeError
from clipforge.learngene import Distill, Learngene, descend
from clipforge.learngene.extract import ExtractConfig, extract
from clipforge.learngene.pipeline import load_ancestry
from clipforge.models.io import load, read_provenance, save
from clipforge.models.preprocess import transform_for
from clipforge.run import normalise
from clipforge.schedule import Schedule
from clipforge.train.plateau import Plateau

from .. import harness
from . import data as D
from .budget import Budget
from .costs import flops_per_sample_trained, parameter_split
from .family import Member, family, learngene_shape, member_config
from .methods import named_counts
from .pretraining import pretrain_member
from .tasks import CurveEval, clip_retrieval, text_counting, vision_classification

NAME = "learngene"
EXTRACT_RECIPE = Distill(alpha=1.0, beta=1.0)  # KD + feature term, depth sampled: the first protocol's pick


def recorded_weights(root: Path, budget: dict[str, Any], recipe: dict[str, Any]) -> str:
    """The ancestry weights' digest of the unit records under `root` made with this budget and recipe."""
    found = set()
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        ident = json.loads(path.read_text()).get("identity") or {}
        if (normalise(ident.get("budget")) == normalise(budget)
                and normalise(harness.canonical_recipe(ident.get("ancestry_recipe"))) == normalise(recipe)):
            found.add(ident.get("ancestry_weights"))
    if len(found) != 1:
        raise ClipforgeError(f"--partial: {root} holds records of {len(found)} ancestries with this budget "
                             f"({', '.join(sorted(map(str, found))) or 'none'}); a partial report needs one")
    return found.pop()


class Bench:
    """The ancestry, the family, the data pools and the unit records of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace, budget: Budget) -> None:
        self.b, self.work = budget, harness.work_dir(args, NAME)
        self.seeds = list(budget.seeds)
        self.members = family(budget.depths)
        self.ancestry, self.anc_path = load_ancestry(harness.resolve_ancestry(args.ancestry, args.quick))
        self.recipe = harness.canonical_recipe(read_provenance(self.anc_path).get("recipe") or {})
        fixed = {k: v for k, v in budget.to_dict().items() if k != "seeds"}  # seeds only add downstream work
        shard = getattr(args, "shard", None)
        # The weights' digest, not only the recipe: the same recipe trains different weights on machines whose
        # kernels differ (fp32 vs bf16, sdpa vs eager attention), and units of two ancestries must not mix.
        self.weights = harness.ancestry_record(self.anc_path)["weights_sha256"]
        root = harness.out_dir(args, NAME) / "units"
        if getattr(args, "partial", False):  # a report of the records: their ancestry, whichever trained here
            self.weights = recorded_weights(root, fixed, self.recipe)
        self.units = harness.Units(
            root, {"budget": fixed, "ancestry_recipe": self.recipe, "ancestry_weights": self.weights},
            canonical=lambda ident: {**ident,
                                     "ancestry_recipe": harness.canonical_recipe(ident.get("ancestry_recipe"))})
        if not getattr(args, "partial", False):
            # one process (shard 0) moves records aside under --overwrite; the others only refuse
            self.units.refuse_foreign(args.overwrite and (shard is None or shard[0] == 0))
            claim = self.work if shard is None else self.work / "shards" / f"{shard[0]}-of-{shard[1]}"
            harness.claim_work(claim, NAME, {"budget": fixed, "ancestry": str(self.anc_path)}, args.overwrite)
        self.keep_models = bool(getattr(args, "keep_models", False))
        self.shape = learngene_shape(self.ancestry.config, budget.width_fraction, num_stages=budget.extract_stages,
                                     aux_depth_vision=budget.aux_depth, aux_depth_text=budget.aux_depth)
        self.data_seconds = self._pools()

    def _pools(self) -> float:
        """Draw the fixed data pools once (every unit reads them); the seconds it took."""
        b, size = self.b, self.ancestry.config.vision_config.image_size
        context = self.ancestry.config.text_config.max_position_embeddings
        with Timer() as t:
            self.pool = D.pretraining(b, size, self.recipe)
            self.ft_scenes = D.scenes("train", b.ft_scenes, 1, size)
            self.test_scenes = D.scenes("test", b.eval_scenes, 1, size)
            self.curve = CurveEval(D.scenes("test", b.curve_scenes, 3, size),
                                   FashionMNIST(split="test", limit=b.curve_fashion), partner=self.ancestry)
            self.classify = {name: D.classification(name, b) for name in ("fashion-mnist", "mnist")}
            trained = D.trained_tokens(self.ancestry, self.recipe)
            keep = not b.text_in_vocabulary
            self.text_test = D.text_task("test", b.text_test, 2, trained, context, keep)
            self.text_train = {s: D.text_task("train", b.text_train, 2 + s, trained, context, keep) for s in self.seeds}
        self.tokens = caption_tokens(self.pool, context, b.batch_size, seed=0)
        collate = Collator(transform_for(self.ancestry.config), context)
        g = torch.Generator().manual_seed(0)
        self.probe = collate([self.pool[int(i)] for i in torch.randperm(len(self.pool), generator=g)[:b.batch_size]])
        print(f"[bench] data ready in {t.seconds:.0f} s: pre-training pool {len(self.pool):,} samples "
              f"({self.pool.name}); text task: {self.text_test['untrained']} of {self.text_test['drawn']} test "
              "captions held a token the ancestry never trained"
              f"{' (left out)' if b.text_in_vocabulary else ' (kept: --quick)'}", flush=True)
        return t.seconds

    def config_of(self, member: Member) -> Any:
        return member_config(self.shape, member)

    def per_sample(self, member: Member, objective: Distill | None) -> float:
        """Training FLOPs per sample of `member` under `objective` (costs.py)."""
        return flops_per_sample_trained(member, self.config_of(member), self.ancestry.config, self.tokens, objective)

    def schedule(self, steps: int, sws: bool, warmup: int | None = None) -> Schedule:
        """SWS's recipe (lower lr, no warm-up) for ancestry-initialised runs, else a warm-up (10 % or `warmup`)."""
        lr = self.b.kd_lr if sws else self.b.lr
        w = 0 if sws else (warmup if warmup is not None else max(1, steps // 10))
        return Schedule(steps=steps, batch_size=self.b.batch_size, lr=lr, weight_decay=0.05, warmup=min(w, steps),
                        seed=0)

    # --- units ----------------------------------------------------------------------------------------

    def downstream_seed(self, model: torch.nn.Module, member: Member, name: str, seed: int) -> dict[str, Any]:
        """The member's own downstream task(s) at one seed."""
        b = self.b
        with Timer() as t:
            if member.kind == "clip":
                r = {"clip": clip_retrieval(model, self.ft_scenes, self.test_scenes, b, seed,
                                            self.work / "downstream" / f"{name}-s{seed}")}
                shutil.rmtree(self.work / "downstream" / f"{name}-s{seed}", ignore_errors=True)
            elif member.kind == "vision":
                r = {task.replace("-", "_"): vision_classification(model, tr, te, b, seed)
                     for task, (tr, te) in self.classify.items()}
            else:
                r = {"text": text_counting(model, self.text_train[seed], self.text_test, seed)}
        r["wall_time_s"] = round(t.seconds, 2)
        return r

    def run_unit(self, name: str, member: Member, make: Callable[[], tuple[Any, dict]], steps: int,
                 objective: Distill | None, sws: bool, *, until: Plateau | None = None, evals: int | None = None,
                 warmup: int | None = None) -> dict[str, Any]:
        """Pre-train one member (or reuse its record and weights), then its downstream seeds, one record each."""
        rec = self.units.get(name)
        model_dir = self.work / "models" / name
        if rec is not None and all(str(s) in rec["downstream"] for s in self.seeds):
            return rec
        if rec is not None and (model_dir / "config.json").is_file():
            model = load(model_dir)
        else:
            model, rec = self._pretrain(name, member, make, steps, objective, sws, until, evals, warmup)
            save(model.cpu(), model_dir, provenance={**rec["init"], "pretrain": rec["pretrain"], "benchmark": NAME})
            self.units.put(name, rec)
        for s in self.seeds:
            if str(s) not in rec["downstream"]:
                rec["downstream"][str(s)] = self.downstream_seed(model, member, name, s)
                self.units.put(name, rec)
        if not self.keep_models:
            shutil.rmtree(model_dir, ignore_errors=True)  # every seed done: the record is what stays
        return rec

    def _pretrain(self, name: str, member: Member, make: Callable[[], tuple[Any, dict]], steps: int,
                  objective: Distill | None, sws: bool, until: Plateau | None, evals: int | None,
                  warmup: int | None) -> tuple[Any, dict[str, Any]]:
        """A fresh member pre-trained with its quality curve: (model, its record without downstream seeds)."""
        model, init = make()
        step0 = self.curve(model)
        every = self.b.eval_every if evals is None else max(1, steps // evals)
        run_dir = self.work / "runs" / name
        if not (run_dir / "checkpoints").is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume: start clean
        pre = pretrain_member(model, member, self.pool, run_dir, schedule=self.schedule(steps, sws, warmup),
                              ancestry=self.ancestry, objective=objective,
                              per_sample_flops=self.per_sample(member, objective), eval_fn=self.curve,
                              eval_every=every, until=until)
        curve = [[0, step0]] + pre.pop("curve")
        return model, {"member": member.name, "init": init, "pretrain": pre, "flops": pre["flops"],
                       "wall_time_s": pre["wall_time_s"], "steps": pre["steps"],
                       "stopped_early": pre["stopped_early"], "parameters": parameter_split(named_counts(model)),
                       "curve": curve, "downstream": {}}

    def extraction(self, mode: str, steps: int, need_weights: bool = False) -> dict[str, Any]:
        """The extraction's record; re-extracted (deterministically) only if the weights are needed and gone."""
        name = f"extract-{mode}"
        rec = self.units.get(name)
        lg_dir = self.learngene_dir(mode)
        if rec is not None and (not need_weights or (lg_dir / "learngene.json").is_file()):
            return rec
        b = self.b
        widths = {t: self.shape.tower_shape(t).width for t in ("vision", "text")}
        cfg = ExtractConfig(mode=mode, stages=b.extract_stages, aux_depth_vision=b.aux_depth,
                            aux_depth_text=b.aux_depth, width_vision=widths["vision"], width_text=widths["text"],
                            distill=EXTRACT_RECIPE, sample_depths=list(b.depths),
                            schedule=Schedule(steps=steps, batch_size=b.batch_size, lr=b.lr, weight_decay=0.05,
                                              warmup=max(1, steps // 10), seed=0))
        lg_path = extract(self.anc_path, self.pool, lg_dir.parent, cfg, quality=self.curve,
                          eval_every=max(1, steps // b.extract_evals), progress=False)
        prov = json.loads((lg_path / "learngene.json").read_text())["provenance"]
        lg = Learngene.load(lg_path)
        step0 = {m.name: self.curve(descend(lg, m.depth, m.depth, m.kind)) for m in self.members}
        return self.units.put(name, {
            "mode": mode, "recipe": EXTRACT_RECIPE.to_dict(), "stages": b.extract_stages, "widths": widths,
            "flops": prov["flops"]["total"], "wall_time_s": prov["wall_time_s"], "steps": prov["steps"],
            "samples": prov["samples_seen"], "auxnet_quality": prov["auxnet_quality"], "init": prov["init"],
            "init_fit": prov["init_fit"], "descendants_step0": step0,
            "parameters": parameter_split(named_counts(lg))})

    def learngene_dir(self, mode: str) -> Path:
        return self.work / "extract" / mode / "learngene"


class Learngenes(dict):
    """The learngenes, loaded on first use: a rerun whose learngene-method units are all recorded needs none."""

    def __init__(self, bench: Bench, steps: int) -> None:
        super().__init__()
        self.bench, self.steps = bench, steps

    def __missing__(self, mode: str) -> Learngene:
        self.bench.extraction(mode, self.steps, need_weights=True)
        self[mode] = Learngene.load(self.bench.learngene_dir(mode))
        return self[mode]
