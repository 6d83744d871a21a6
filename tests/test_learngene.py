"""MM-LG: the learngene's weighted sums, the Aux-Net's ties, distillation, descendants and baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _train_worker import SyntheticPairs
from helpers import fake_batch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from clipforge.errors import ClipforgeError
from clipforge.learngene import (
    BLOCK_PARTS,
    KDStep,
    Learngene,
    LearngeneConfig,
    Shape,
    auto_lg,
    build_auxnet,
    descend,
    heur_lg,
    scratch,
    weight_sources,
)
from clipforge.models import io
from clipforge.models.encode import image_features, text_features
from clipforge.models.params import count_params
from clipforge.models.registry import build, get_config_dict
from clipforge.train import TrainConfig, train

Q = "self_attn.q_proj.weight"


def tiny_config(**kw) -> LearngeneConfig:
    base = dict(width=32, heads=2, mlp=64, act="gelu", image_size=32, patch_size=8, context=16, projection_dim=32,
                aux_depth_vision=2, aux_depth_text=2)
    base.update(kw)
    return LearngeneConfig(**base)


def perturbed(cfg: LearngeneConfig, seed: int = 0) -> Learngene:
    """A learngene with every tensor (schedule knots included) moved off its init, so ties are visible."""
    lg = Learngene(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in lg.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return lg


def tiny_ancestry(depth_vision: int = 2, depth_text: int = 2, seed: int = 0):
    d = get_config_dict("tiny")
    d["vision_config"]["num_hidden_layers"] = depth_vision
    d["text_config"]["num_hidden_layers"] = depth_text
    return build(d, seed=seed)


def features(model, pixels, ids) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        if hasattr(model, "vision_model"):
            out["image"] = image_features(model, pixels)
        if hasattr(model, "text_model"):
            out["text"] = text_features(model, ids)
    return out


def layer_weight(model, tower: str, layer: int, path: str = Q) -> torch.Tensor:
    """A block tensor as the model uses it (computed, when the model is an Aux-Net)."""
    mod_path, _, name = path.rpartition(".")
    return getattr(getattr(model, f"{tower}_model").encoder.layers[layer].get_submodule(mod_path), name)


# --- the weighted sums -----------------------------------------------------------------------------


def test_schedule_coefficients_hand_values():
    lin = Learngene(tiny_config(schedule="linear"))
    assert [lin.coefficients("vision", l, 4) for l in range(4)] == [(1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (1.0, 0.75)]
    blend = Learngene(tiny_config(schedule="blend"))
    got = [blend.coefficients("text", l, 4) for l in range(4)]
    assert [x for pair in got for x in pair] == pytest.approx([1.0, 0.0, 2 / 3, 1 / 3, 1 / 3, 2 / 3, 0.0, 1.0])
    assert got[0] == (1.0, 0.0) and got[3] == (0.0, 1.0)  # endpoints exactly
    assert blend.coefficients("text", 0, 1) == (1.0, 0.0)

    learned = Learngene(tiny_config(schedule="learned", aux_depth_vision=4, aux_depth_text=1))
    # Freshly initialised, it is the linear schedule at any depth (the last segment extended).
    for depth in (2, 4, 5, 7):
        for l in range(depth):
            a, b = (float(x.detach()) for x in learned.coefficients("vision", l, depth))
            assert a == pytest.approx(1.0) and b == pytest.approx(l / depth)
    with torch.no_grad():
        learned.schedule_a["vision"].copy_(torch.tensor([1.0, 0.5, 0.25, 0.0]))
        learned.schedule_b["vision"].copy_(torch.tensor([0.0, 1.0, 3.0, 6.0]))
        learned.schedule_a["text"].fill_(0.7)
        learned.schedule_b["text"].fill_(0.2)
    c = lambda l, L: tuple(float(x.detach()) for x in learned.coefficients("vision", l, L))  # noqa: E731
    assert [c(l, 4) for l in range(4)] == [(1.0, 0.0), (0.5, 1.0), (0.25, 3.0), (0.0, 6.0)]  # knots exactly
    assert c(1, 2) == (0.25, 3.0)  # t = 2: knot 2
    assert c(1, 3) == pytest.approx((0.5 - 0.25 / 3, 1 + 2 / 3))  # t = 4/3
    assert c(1, 8) == pytest.approx((0.75, 0.5))  # t = 1/2
    assert c(7, 8) == pytest.approx((-0.125, 7.5))  # t = 3.5: last segment extended
    assert tuple(float(x.detach()) for x in learned.coefficients("text", 2, 5)) == pytest.approx((0.7, 0.2))  # one knot


def test_config_json_and_validation():
    cfg = tiny_config(mode="shared_only", schedule="blend", num_stages=2)
    assert LearngeneConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for bad in (dict(mode="nope"), dict(schedule="cosine"), dict(init="pretrained"), dict(heads=3), dict(num_stages=0)):
        with pytest.raises(ClipforgeError):
            tiny_config(**bad)
    with pytest.raises(ClipforgeError, match="unknown learngene config"):
        LearngeneConfig.from_dict({"bogus": 1})
    with pytest.raises(ClipforgeError, match="needs the ancestry"):
        Learngene(tiny_config(init="ancestry"))
    with pytest.raises(ClipforgeError, match="do not fit in the ancestry"):  # its blocks are 32 wide
        Learngene(tiny_config(width=64, init="ancestry"), ancestry=tiny_ancestry())


def test_stage_map_is_contiguous():
    cfg = tiny_config(num_stages=5)
    sizes = [sum(cfg.stage(l, 16) == s for l in range(16)) for s in range(5)]
    assert sizes == [4, 3, 3, 3, 3]
    assert [cfg.stage(l, 2) for l in range(2)] == [0, 2]  # shallower than S: stages skipped


# --- the Aux-Net and its descendants ---------------------------------------------------------------


@pytest.mark.parametrize("mode,schedule,stages", [("mmlg", "linear", 1), ("mmlg", "learned", 2),
                                                  ("tleg_per_tower", "blend", 1), ("shared_only", "linear", 1)])
def test_descendant_at_aux_depth_reproduces_auxnet(mode, schedule, stages):
    lg = perturbed(tiny_config(mode=mode, schedule=schedule, num_stages=stages, aux_depth_text=3))
    aux = build_auxnet(lg)
    child = descend(lg)
    pixels, ids = fake_batch(3)
    want, got = features(aux, pixels, ids), features(child, pixels, ids)
    for k in ("image", "text"):
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    assert not any(parametrize.is_parametrized(m) for m in child.modules())
    lg_ptrs = {p.data_ptr() for p in lg.parameters()}
    assert not any(p.data_ptr() in lg_ptrs for p in child.parameters())  # plain, independent tensors


def test_theta_mm_is_one_tensor_seen_from_both_towers():
    lg = perturbed(tiny_config())
    aux = build_auxnet(lg, 2, 3)
    mm = lg.theta_mm[0]["q_weight"]
    for tower, layer in (("vision", 0), ("vision", 1), ("text", 0), ("text", 2)):
        first, second = weight_sources(aux, tower, layer, Q)
        assert first is mm
        assert second is getattr(lg, f"theta_u_{tower}")[0]["q_weight"]
    for tied, name in ((aux.logit_scale, "logit_scale"),
                       (aux.text_model.embeddings.token_embedding.weight, "text_token_embedding")):
        assert tied is lg.non_block[name]
    # Every trainable tensor of the Aux-Net is a learngene tensor, each counted once.
    assert {id(p) for p in aux.parameters()} == {id(p) for p in lg.parameters()}
    assert count_params(aux)["total"] == lg.num_parameters()

    pixels, ids = fake_batch(4)
    for loss_tower, other in (("vision", "text"), ("text", "vision")):
        before = layer_weight(aux, other, 1).detach().clone()
        lg.zero_grad(set_to_none=True)
        feats = image_features(aux, pixels) if loss_tower == "vision" else text_features(aux, ids)
        feats.pow(2).sum().backward()
        assert mm.grad is not None and mm.grad.abs().sum() > 0
        assert getattr(lg, f"theta_u_{other}")[0]["q_weight"].grad is None  # the other tower's own part
        torch.optim.SGD(lg.parameters(), lr=0.1).step()
        assert not torch.equal(layer_weight(aux, other, 1), before)  # moved through theta_mm


def test_modes_tleg_per_tower_and_shared_only():
    lg = perturbed(tiny_config(mode="tleg_per_tower"))
    aux = build_auxnet(lg)
    vision_ids = {id(p) for t in lg.roles("vision") for p in lg.role(t).parameters()}
    text_ids = {id(p) for t in lg.roles("text") for p in lg.role(t).parameters()}
    assert not vision_ids & text_ids
    text_before = {i: layer_weight(aux, "text", i).detach().clone() for i in range(2)}
    image_features(aux, fake_batch(4)[0]).pow(2).sum().backward()
    torch.optim.SGD(lg.parameters(), lr=0.1).step()
    assert all(torch.equal(layer_weight(aux, "text", i), w) for i, w in text_before.items())

    lg = perturbed(tiny_config(mode="shared_only"))
    aux = build_auxnet(lg, 2, 4)
    assert set(lg.blocks) == {"theta_mm", "theta_s"}
    for path in BLOCK_PARTS.values():
        assert torch.equal(layer_weight(aux, "vision", 1, path), layer_weight(aux, "text", 2, path))  # l/L = 1/2


@pytest.mark.slow
def test_descendants_load_in_plain_transformers(tmp_path):
    lg = perturbed(tiny_config(schedule="learned"))
    pixels, ids = fake_batch(3, seed=5)
    save_file({"pixels": pixels, "ids": ids}, str(tmp_path / "inputs.safetensors"))
    jobs, expected = {}, {}
    for name, dv, dt, kind in (("clip11", 1, 1, "clip"), ("clip23", 2, 3, "clip"), ("vision3", 3, None, "vision"),
                               ("text4", None, 4, "text")):
        child = descend(lg, dv, dt, kind=kind)
        io.save(child, tmp_path / name, provenance={"source": "test"})
        jobs[name] = [kind, str(tmp_path / name)]
        expected.update({f"{name}.{k}": v for k, v in features(child, pixels, ids).items()})
        if kind == "clip":
            depths = (child.config.vision_config.num_hidden_layers, child.config.text_config.num_hidden_layers)
            assert depths == (dv, dt)
    script = r"""
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection
inp = load_file(sys.argv[1]); out = {}
classes = {"clip": CLIPModel, "vision": CLIPVisionModelWithProjection, "text": CLIPTextModelWithProjection}
for name, (kind, path) in json.loads(sys.argv[2]).items():
    m = classes[kind].from_pretrained(path).eval()
    with torch.no_grad():
        if kind == "clip":
            i, t = m.get_image_features(pixel_values=inp["pixels"]), m.get_text_features(input_ids=inp["ids"])
            out[name + ".image"] = i if torch.is_tensor(i) else i.pooler_output
            out[name + ".text"] = t if torch.is_tensor(t) else t.pooler_output
        elif kind == "vision":
            out[name + ".image"] = m(pixel_values=inp["pixels"]).image_embeds
        else:
            out[name + ".text"] = m(input_ids=inp["ids"]).text_embeds
assert not any(k.startswith("clipforge") for k in sys.modules)
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[3])
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "inputs.safetensors"), json.dumps(jobs),
                    str(tmp_path / "out.safetensors")], check=True, env=env, cwd=tmp_path, timeout=120)
    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0)


def test_learngene_save_load_round_trip(tmp_path):
    lg = perturbed(tiny_config(schedule="learned", num_stages=2, aux_depth_text=3))
    lg.save(tmp_path / "lg", provenance={"ancestry": "none"})
    back = Learngene.load(tmp_path / "lg")
    assert back.config == lg.config
    a, b = lg.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "lg" / "README.md").read_text()
    assert f"{lg.num_parameters():,}" in card and "reconstruction" in card


# --- extraction ------------------------------------------------------------------------------------


def test_ancestry_init_means_and_exact_reproduction():
    ancestry = tiny_ancestry()
    cfg = LearngeneConfig.from_ancestry(ancestry.config, init="ancestry")
    lg = Learngene(cfg, ancestry=ancestry)
    s = ancestry.state_dict()
    mean = torch.stack([s[f"{t}_model.encoder.layers.{i}.{Q}"] for t in ("vision", "text") for i in range(2)]).mean(0)
    torch.testing.assert_close(lg.theta_mm[0]["q_weight"], mean)
    assert not lg.theta_u_text[0]["fc1_weight"].any()

    # TLEG per tower, one stage per ancestry layer, ancestry init: the Aux-Net *is* the ancestry, so KD = 0.
    cfg = LearngeneConfig.from_ancestry(ancestry.config, mode="tleg_per_tower", num_stages=2, init="ancestry")
    aux = build_auxnet(Learngene(cfg, ancestry=ancestry))
    pixels, ids = fake_batch(4)
    want, got = features(ancestry, pixels, ids), features(aux, pixels, ids)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    loss, logs = KDStep(ancestry)(aux, {"pixel_values": pixels, "input_ids": ids})
    assert abs(float(logs["kd"])) < 1e-6 and abs(float(loss.detach())) < 1e-6


def test_kd_training_decreases_and_touches_only_the_learngene(tmp_path):
    teacher = tiny_ancestry(seed=1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    lg = Learngene(tiny_config(), seed=0)
    aux = build_auxnet(lg)
    step = KDStep(teacher, alpha=0.5, beta=0.1, tau=2.0)
    cfg = TrainConfig(steps=8, batch_size=8, lr=3e-3, weight_decay=0.0, log_every=1, seed=0)
    train(aux, SyntheticPairs(n=8), cfg, tmp_path, step_fn=step, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    kd = [r["kd"] for r in log]
    assert all(k >= 0 for k in kd) and kd[-1] < kd[0]
    assert {"infonce", "feature", "kd_i2t", "kd_t2i"} <= set(log[0])
    assert {id(p) for p in aux.parameters() if p.requires_grad} == {id(p) for p in lg.parameters()}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


# --- baselines and size ----------------------------------------------------------------------------


def test_heur_lg_and_auto_lg_inherit_blocks():
    ancestry = tiny_ancestry(4, 4, seed=3)
    src = ancestry.state_dict()
    d = get_config_dict("tiny")
    d["vision_config"]["num_hidden_layers"], d["text_config"]["num_hidden_layers"] = 4, 2
    shape = Shape(d, "clip")

    child, rec = heur_lg(ancestry, shape, k=3, seed=9)
    got = child.state_dict()
    for tower, pairs in (("vision", [(1, 1), (2, 2), (3, 3)]), ("text", [(0, 2), (1, 3)])):  # text: shallower than k
        assert rec["inherited"][tower] == [list(p) for p in pairs]
        for mine, theirs in pairs:
            for path in BLOCK_PARTS.values():
                assert torch.equal(got[f"{tower}_model.encoder.layers.{mine}.{path}"],
                                   src[f"{tower}_model.encoder.layers.{theirs}.{path}"])
    assert not torch.equal(got[f"vision_model.encoder.layers.0.{Q}"], src[f"vision_model.encoder.layers.0.{Q}"])
    assert torch.equal(got["text_projection.weight"], src["text_projection.weight"])

    pixels, ids = fake_batch(4)
    for score in ("block_influence", "relative_change"):
        child, rec = auto_lg(ancestry, Shape(d, "vision"), k=2, data={"pixel_values": pixels}, score=score)
        scores = rec["scores"]["vision"]
        assert len(scores) == 4 and all(s > 0 for s in scores) and "text" not in rec["scores"]
        chosen = sorted(sorted(range(4), key=lambda i: -scores[i])[:2])
        assert rec["chosen"]["vision"] == chosen
        got = child.state_dict()
        for mine, theirs in zip((2, 3), chosen):
            assert torch.equal(got[f"vision_model.encoder.layers.{mine}.{Q}"],
                               src[f"vision_model.encoder.layers.{theirs}.{Q}"])
    model, rec = scratch(shape, seed=0)
    assert rec["method"] == "scratch" and model.config.text_config.num_hidden_layers == 2


def test_learngene_is_smaller_than_the_ancestry():
    ancestry = tiny_ancestry(4, 4)
    for mode in ("mmlg", "tleg_per_tower", "shared_only"):
        lg = Learngene(LearngeneConfig.from_ancestry(ancestry.config, mode=mode, schedule="learned"))
        assert lg.num_parameters() < count_params(ancestry)["total"]
