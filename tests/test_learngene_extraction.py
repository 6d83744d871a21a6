"""MM-LG extraction (issue 15): least-squares init, the Aux-Net measured, the plateau rule, the new options,
and the TinyCLIP-style and weight-selection baselines."""

from __future__ import annotations

import json
import random

import pytest
import torch
from _train_worker import SyntheticPairs
from helpers import fake_batch

from clipforge.errors import ClipforgeError
from clipforge.learngene import (
    BLOCK_PARTS,
    DepthSampledStep,
    Distill,
    KDStep,
    Learngene,
    LearngeneConfig,
    Quality,
    Shape,
    build_auxnet,
    descend,
    select_elements,
    tinyclip,
    weight_selection,
)
from clipforge.learngene.learngene import NON_BLOCK, block_param_name
from clipforge.models import io
from clipforge.models.registry import build, get_config_dict
from clipforge.train import TrainConfig, train
from clipforge.train.plateau import Plateau


def ancestry_of(depth: int = 4, seed: int = 0):
    d = get_config_dict("tiny")
    for t in ("vision_config", "text_config"):
        d[t]["num_hidden_layers"] = depth
    return build(d, seed=seed)


@torch.no_grad()
def on_basis(ancestry, mode: str, schedule: str, stages: int, seed: int = 5) -> None:
    """Rewrite the ancestry's blocks so they lie exactly on a learngene's basis (a random learngene's blocks)."""
    cfg = LearngeneConfig.from_ancestry(ancestry.config, mode=mode, schedule=schedule, num_stages=stages,
                                        init="random")
    lg = Learngene(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for p in lg.blocks.parameters():  # not the schedule's knots: the fitted learngene starts from linear ones
        p.add_(0.1 * torch.randn(p.shape, generator=g))  # LN b-tensors start at 0: make every tensor count
    state = ancestry.state_dict()
    for t in ("vision", "text"):
        depth = ancestry.config.vision_config.num_hidden_layers
        for i in range(depth):
            for key, part in BLOCK_PARTS.items():
                state[block_param_name(t, i, part)].copy_(lg.block_weight(t, i, depth, key))


@pytest.mark.parametrize("mode,schedule,stages", [("mmlg", "linear", 1), ("mmlg", "blend", 2),
                                                  ("tleg_per_tower", "linear", 2), ("shared_only", "learned", 1)])
def test_lstsq_init_reproduces_an_ancestry_on_the_basis(mode, schedule, stages):
    ancestry = ancestry_of(depth=4)
    on_basis(ancestry, mode, schedule, stages)  # shared_only: both towers get the same blocks
    cfg = LearngeneConfig.from_ancestry(ancestry.config, mode=mode, schedule=schedule, num_stages=stages, init="lstsq")
    lg = Learngene(cfg, ancestry=ancestry)
    assert max(lg.fit_record["relative_residual"].values()) < 1e-5
    child = descend(lg, 4, 4)
    want = ancestry.state_dict()
    for k, v in child.state_dict().items():
        torch.testing.assert_close(v, want[k], atol=2e-5, rtol=0, msg=k)


def test_lstsq_fit_is_least_squares_and_beats_the_mean():
    ancestry = ancestry_of(depth=4, seed=1)  # random blocks: not on any basis
    fits = {}
    for init in ("lstsq", "mean"):
        lg = Learngene(LearngeneConfig.from_ancestry(ancestry.config, init=init), ancestry=ancestry)
        fits[init] = lg
    s = ancestry.state_dict()

    def error(lg):
        child = descend(lg, 4, 4).state_dict()
        return sum(float((child[k] - s[k]).square().sum()) for k in child if ".encoder.layers." in k)

    assert error(fits["lstsq"]) < error(fits["mean"])
    # The normal equations hold: the residual is orthogonal to every role's direction (q weights, stage 0).
    lg = fits["lstsq"].requires_grad_(False)
    grad = {r: torch.zeros_like(lg.blocks[r][0]["q_weight"]).detach() for r in lg.blocks}
    for t in ("vision", "text"):
        for i in range(4):
            a, b = lg.coefficients(t, i, 4)
            res = lg.block_weight(t, i, 4, "q_weight") - s[block_param_name(t, i, BLOCK_PARTS["q_weight"])]
            first, second = lg.roles(t)
            grad[first] += a * res
            grad[second] += b * res
    assert all(float(g.abs().max()) < 1e-4 for g in grad.values())
    # Non-block parts: copied by both ancestry inits alike.
    for key in NON_BLOCK:
        assert torch.equal(fits["lstsq"].non_block[key], fits["mean"].non_block[key])


def test_legacy_ancestry_init_reads_as_mean_and_unknown_init_is_refused():
    assert LearngeneConfig(init="ancestry").init == "mean"
    with pytest.raises(ClipforgeError, match="init"):
        LearngeneConfig(init="nope")
    with pytest.raises(ClipforgeError, match="needs the ancestry"):
        Learngene(LearngeneConfig(init="lstsq"))


# --- the objective's options -----------------------------------------------------------------------


def _batch(n=6):
    pixels, ids = fake_batch(n)
    return {"pixel_values": pixels, "input_ids": ids}


def test_each_distill_option_changes_only_what_it_names():
    teacher, student = ancestry_of(2, seed=1), ancestry_of(2, seed=2)
    with torch.no_grad():
        student.logit_scale.fill_(1.0)  # unlike the teacher's 2.66, so tying is visible
    batch = _batch()
    base = KDStep(teacher, alpha=0.5, beta=0.3)(student, batch)[1]
    mse = KDStep(teacher, alpha=0.5, beta=0.3, feature="mse")(student, batch)[1]
    assert mse["kd"] == base["kd"] and mse["infonce"] == base["infonce"] and mse["feature"] != base["feature"]
    tied = KDStep(teacher, alpha=0.5, beta=0.3, tie_temperature=True)(student, batch)[1]
    assert tied["feature"] == base["feature"] and tied["kd"] != base["kd"] and tied["infonce"] != base["infonce"]
    # Tied to its own scale, nothing changes.
    with torch.no_grad():
        student.logit_scale.copy_(teacher.logit_scale)
    a = KDStep(teacher, alpha=0.5, beta=0.3)(student, batch)[1]
    b = KDStep(teacher, alpha=0.5, beta=0.3, tie_temperature=True)(student, batch)[1]
    assert all(torch.allclose(a[k], b[k]) for k in a)
    # mse is the unnormalised embeddings' mean squared error, averaged over the towers.
    from clipforge.models.encode import image_features, text_features
    with torch.no_grad():
        want = (torch.nn.functional.mse_loss(image_features(student, batch["pixel_values"]),
                                             image_features(teacher, batch["pixel_values"]))
                + torch.nn.functional.mse_loss(text_features(student, batch["input_ids"]),
                                               text_features(teacher, batch["input_ids"]))) / 2
    got = KDStep(teacher, alpha=1.0, beta=1.0, feature="mse")(student, batch)[1]["feature"]
    torch.testing.assert_close(got, want)
    for bad in (dict(feature="l1"), dict(alpha=2.0), dict(tau=0.0)):
        with pytest.raises(ClipforgeError):
            Distill(**bad)


def test_depth_sampled_step_draws_depths_and_trains_one_learngene():
    teacher = ancestry_of(4, seed=1)
    lg = Learngene(LearngeneConfig.from_ancestry(teacher.config, aux_depth_vision=2, aux_depth_text=2), seed=0)
    aux = build_auxnet(lg)
    step = DepthSampledStep(KDStep(teacher), [1, 2, 3])
    random.seed(0)
    depths = []
    for _ in range(12):
        loss, logs = step(aux, _batch(4))
        depths.append(logs["aux_depth"])
        loss.backward()
    assert set(depths) == {1, 2, 3} and step.counts == {d: depths.count(d) for d in (1, 2, 3)}
    assert all(p.grad is not None for p in lg.parameters() if p.requires_grad)
    # Only the learngene: the other-depth nets hold no parameter of their own.
    for net in step.nets.values():
        assert {id(p) for p in net.parameters()} == {id(p) for p in lg.parameters()}
    # With the Aux-Net depth alone it is the plain step.
    random.seed(0)
    a = DepthSampledStep(KDStep(teacher), [2])(aux, _batch(4))[0]
    b = KDStep(teacher)(aux, _batch(4))[0]
    torch.testing.assert_close(a, b)


# --- the plateau rule and the training loop ------------------------------------------------------


def test_plateau_rule_by_hand():
    rule = Plateau("m", patience=2, min_delta=0.01, min_evals=3)
    hist = lambda *vals: [(i, {"m": v}) for i, v in enumerate(vals)]  # noqa: E731
    assert not rule(hist(0.1, 0.2))  # too few
    assert not rule(hist(0.1, 0.2, 0.3))  # still rising
    assert rule(hist(0.1, 0.3, 0.305, 0.302))  # best 0.305 vs 0.3 two evaluations earlier: +0.005 < 0.01
    assert not rule(hist(0.1, 0.3, 0.305, 0.32))


class _Rising:
    """An eval_fn whose metric rises, then stays flat."""

    def __init__(self, flat_after: int) -> None:
        self.flat_after = flat_after

    def __call__(self, model, step):
        return {"m": min(step, self.flat_after) / 100}


def test_train_until_stops_at_the_plateau_and_a_rerun_trains_no_further(tmp_path):
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-3, log_every=1, eval_every=2, save_every=100, seed=0)
    rule = Plateau("m", patience=2, min_delta=0.001, min_evals=3)
    model = build("tiny", seed=0)
    train(model, SyntheticPairs(n=16), cfg, tmp_path, eval_fn=_Rising(6), until=rule, progress=False)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if "loss" in r) == 10  # evals at 2..10; flat from 6: stop after 10
    assert any(r.get("stopped") for r in log)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, SyntheticPairs(n=16), cfg, tmp_path, eval_fn=_Rising(6), until=rule, resume="latest",
          progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- extraction: the Aux-Net's reported quality ------------------------------------------------------


def test_extraction_reports_auxnet_quality_that_an_independent_evaluation_reproduces(tmp_path):
    from clipforge.data.scenes import ScenesDataset
    from clipforge.learngene.extract import ExtractConfig, extract

    anc_dir = tmp_path / "anc"
    ancestry = ancestry_of(2, seed=0)
    io.save(ancestry, anc_dir, provenance={"source": "test"})
    quality = Quality(ScenesDataset(split="test", size=24, seed=3, image_size=32))
    data = ScenesDataset(split="train", size=32, seed=0, image_size=32)
    from clipforge.schedule import Schedule

    cfg = ExtractConfig(schedule=Schedule(steps=4, batch_size=8, lr=1e-3, warmup=1))
    lg_dir = extract(anc_dir, data, tmp_path / "out", cfg, quality=quality, eval_every=2, progress=False)
    prov = json.loads((lg_dir / "learngene.json").read_text())["provenance"]
    q = prov["auxnet_quality"]
    assert prov["init"] == "lstsq" and [s for s, _ in q["curve"]] == [0, 2, 4]
    # Final: the saved learngene's Aux-Net, evaluated afresh.
    aux = build_auxnet(Learngene.load(lg_dir))
    fresh = quality(aux)
    assert fresh == pytest.approx(q["final"], abs=1e-6)
    # Step 0: a learngene initialised the same way; ancestry: the ancestry itself.
    start = build_auxnet(Learngene(LearngeneConfig.from_dict(
        json.loads((lg_dir / "learngene.json").read_text())["config"]), ancestry=io.load(anc_dir)))
    assert quality(start) == pytest.approx(q["step0"], abs=1e-6)
    assert quality(io.load(anc_dir)) == pytest.approx(q["ancestry"], abs=1e-6)
    assert set(prov["init_fit"]["relative_residual"]) == {"vision", "text"}


def test_plateau_needs_a_measurement(tmp_path):
    from clipforge.learngene.extract import extract

    io.save(ancestry_of(2), tmp_path / "anc", provenance={"source": "test"})
    with pytest.raises(ClipforgeError, match="plateau"):
        extract(tmp_path / "anc", SyntheticPairs(n=8), tmp_path / "out", plateau=Plateau("m"), progress=False)


# --- baselines ---------------------------------------------------------------------------------------


def test_tinyclip_selects_uniform_layers_and_weight_selection_the_first():
    ancestry = ancestry_of(8, seed=3)
    shape = Shape(LearngeneConfig.from_ancestry(ancestry.config).clip_config(4, 4))
    s = ancestry.state_dict()
    for fn, want in ((tinyclip, [0, 2, 4, 6]), (weight_selection, [0, 1, 2, 3])):
        model, rec = fn(ancestry, shape)
        assert rec["layers"] == {"vision": want, "text": want}
        m = model.state_dict()
        for t in ("vision", "text"):
            for i, a in enumerate(want):
                for part in BLOCK_PARTS.values():
                    assert torch.equal(m[block_param_name(t, i, part)], s[block_param_name(t, a, part)])
        assert torch.equal(m["text_model.embeddings.token_embedding.weight"],
                           s["text_model.embeddings.token_embedding.weight"])
    model, rec = tinyclip(ancestry, Shape(LearngeneConfig.from_ancestry(ancestry.config).clip_config(6, 2)))
    assert rec["layers"] == {"vision": [0, 1, 2, 4, 5, 6], "text": [0, 4]}
    with pytest.raises(ClipforgeError, match="deeper"):
        weight_selection(ancestry_of(2), shape)


def test_weight_selection_selects_elements_uniformly_when_narrower():
    x = torch.arange(24.0).reshape(4, 6)
    assert torch.equal(select_elements(x, (2, 3)), x[[0, 2]][:, [0, 2, 4]])
    with pytest.raises(ClipforgeError, match="wider"):
        select_elements(x, (5, 6))
    ancestry = ancestry_of(2, seed=0)
    d = get_config_dict("tiny")
    for t in ("vision_config", "text_config"):
        d[t].update(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    d["projection_dim"] = 16
    model, _ = weight_selection(ancestry, Shape(d))
    src, got = ancestry.state_dict(), model.state_dict()
    w = src["vision_model.encoder.layers.0.mlp.fc1.weight"]  # (64, 32) → (32, 16): every other row and column
    torch.testing.assert_close(got["vision_model.encoder.layers.0.mlp.fc1.weight"], w[::2, ::2])
    out = model(**{k: v for k, v in zip(("pixel_values", "input_ids"), fake_batch(2))})
    assert torch.isfinite(out.logits_per_image).all()
