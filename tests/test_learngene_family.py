"""The width-gap benchmark's family (benchmarks/learngene): its shapes, every method producing them, the compute
matching arithmetic, the teacher cache and one-tower steps, and the SE-aware verdict rule on synthetic numbers."""

from __future__ import annotations

import pytest
import torch
from helpers import fake_batch

from benchmarks.learngene import costs, verdicts
from benchmarks.learngene.family import Member, family, family_widths, learngene_shape, member_config, narrow_width
from benchmarks.learngene.methods import INHERIT_METHODS, LEARNGENE_METHODS, initialise, pretrain_objective
from clipforge.errors import ClipforgeError
from clipforge.learngene import Distill, Learngene
from clipforge.learngene.distill import KDStep, TeacherCache, TowerStep, teacher_cache
from clipforge.learngene.quality import paired_clip
from clipforge.learngene.widths import BlockShape, Narrowing
from clipforge.models.registry import build, get_config_dict, make_config


def test_two_thirds_in_whole_heads_on_the_demo_ancestry_and_vit_b32():
    assert family_widths(make_config("ancestry"), 2 / 3) == {"vision": 96, "text": 64}
    assert family_widths(make_config("ViT-B-32"), 2 / 3) == {"vision": 512, "text": 320}
    assert narrow_width(128, 4, 2 / 3) == 96 and narrow_width(96, 3, 2 / 3) == 64
    assert narrow_width(32, 1, 2 / 3) == 32  # never below one head
    with pytest.raises(ClipforgeError):
        narrow_width(100, 3, 2 / 3)
    shape = learngene_shape(make_config("ancestry"), 2 / 3)
    assert shape.tower_shape("vision") == BlockShape(96, 3, 384) and shape.tower_shape("text") == BlockShape(64, 2, 256)
    vit = learngene_shape(make_config("ViT-B-32"), 2 / 3)
    assert vit.tower_shape("vision") == BlockShape(512, 8, 2048) and vit.tower_shape("text") == BlockShape(320, 5, 1280)


def test_the_family_is_nine_members_of_the_narrow_shape():
    members = family((2, 4, 6))
    assert [m.name for m in members] == ["clip-d2", "clip-d4", "clip-d6", "vision-d2", "vision-d4", "vision-d6",
                                         "text-d2", "text-d4", "text-d6"]
    assert Member.parse("vision-d4") == Member("vision", 4)
    shape = learngene_shape(make_config("ancestry"), 2 / 3)
    clip = member_config(shape, Member("clip", 4))
    assert (clip.vision_config.hidden_size, clip.text_config.hidden_size, clip.vision_config.num_hidden_layers,
            clip.projection_dim) == (96, 64, 4, 128)
    text = member_config(shape, Member("text", 6))
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers, text.projection_dim) == (64, 2, 6, 128)


def _small_ancestry(depth: int = 3):
    d = get_config_dict("tiny")
    for t in ("vision_config", "text_config"):
        d[t].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=depth)
    return build(d, seed=1)


@pytest.mark.parametrize("method", LEARNGENE_METHODS + INHERIT_METHODS + ("scratch", "feature_kd", "ptft"))
def test_every_method_makes_every_member_at_the_family_shape(method):
    anc = _small_ancestry()
    shape = learngene_shape(anc.config, 2 / 3, num_stages=2, aux_depth_vision=2, aux_depth_text=2)
    assert shape.tower_shape("vision") == BlockShape(24, 3, 48)  # 3 of 4 heads of 8
    lgs = {m: Learngene(learngene_shape(anc.config, 2 / 3, mode=m, init="lstsq"), ancestry=anc)
           for m in LEARNGENE_METHODS}
    px, ids = fake_batch(4)
    for m in family((1, 3)):
        model, _ = initialise(method, m, learngenes=lgs, ancestry=anc, shape=shape, k=1,
                              probe_batch={"pixel_values": px, "input_ids": ids})
        want = member_config(shape, m)
        got = model.config
        assert type(got) is type(want) and got.to_dict()["projection_dim"] == 32
        for t in m.towers:
            g, w = getattr(got, f"{t}_config", got), getattr(want, f"{t}_config", want)
            assert (g.hidden_size, g.num_attention_heads, g.intermediate_size, g.num_hidden_layers) == \
                (w.hidden_size, w.num_attention_heads, w.intermediate_size, w.num_hidden_layers), (method, m, t)
        with torch.no_grad():
            out = model(pixel_values=px) if m.kind == "vision" else model(input_ids=ids) if m.kind == "text" \
                else model(pixel_values=px, input_ids=ids)
        assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


def test_weight_selection_and_tinyclip_select_whole_heads_when_narrower():
    anc = _small_ancestry()
    shape = learngene_shape(anc.config, 2 / 3)
    cut = Narrowing(BlockShape(32, 4, 64), BlockShape(24, 3, 48))
    src = anc.state_dict()
    for method, layers in (("weight_selection", [0]), ("tinyclip", [1])):  # depth 1 of 3: first / floor(0·3/1)
        model, rec = initialise(method, Member("vision", 1), learngenes={}, ancestry=anc, shape=shape, k=1,
                                probe_batch={})
        got = model.state_dict()
        a = layers[0] if method == "weight_selection" else 0
        q = src[f"vision_model.encoder.layers.{a}.self_attn.q_proj.weight"]
        assert torch.equal(got["vision_model.encoder.layers.0.self_attn.q_proj.weight"], cut.block("q_weight", q))
        assert torch.equal(cut.index["inner"], torch.arange(24))  # heads 0, 1, 2 whole
        assert torch.equal(got["visual_projection.weight"], src["visual_projection.weight"][:, cut.index["model"]])
        assert "whole heads" in rec["element_selection"]


def test_compute_matching_splits_each_budget_in_ptft_proportions():
    ptft = {"clip-d2": 6.0e12, "clip-d4": 12.0e12, "vision-d2": 3.0e12, "text-d2": 9.0e12}
    C = sum(ptft.values())
    sh = costs.shares(ptft)
    assert sh["clip-d4"] == pytest.approx(0.4) and sum(sh.values()) == pytest.approx(1.0)
    ext = 2.0e12
    per_step = {"clip-d2": 3.1e9, "clip-d4": 5.3e9, "vision-d2": 2.2e9, "text-d2": 4.7e9}
    for F in (C / 2.8, C):
        for extraction in (0.0, ext):  # a learngene method's extraction counted once for the family
            budgets = costs.member_budgets(F, extraction, sh)
            assert sum(budgets.values()) == pytest.approx(F - extraction)
            spent = sum(costs.steps_for(budgets[n], per_step[n]) * per_step[n] for n in ptft) + extraction
            assert F - sum(per_step.values()) < spent <= F  # at most one step short per member, never over
    assert costs.steps_for(1.0, 5.0) == 1
    assert costs.extraction_steps(204_800, 0.3, 64) == 960  # 30 % of the demo ancestry's 800 × 256 samples


def test_flops_charge_every_ancestry_forward_a_step_reads():
    anc = make_config("ancestry")
    shape = learngene_shape(anc, 2 / 3)
    from clipforge.cost import flops_per_sample, forward_flops

    t = 20
    kd, feat = pretrain_objective("mmlg", 1.0), pretrain_objective("feature_kd", 1.0)
    clip = Member("clip", 2)
    student = 3 * forward_flops(member_config(shape, clip), "clip", t)
    assert costs.flops_per_sample_trained(clip, member_config(shape, clip), anc, t, None) == student
    assert costs.flops_per_sample_trained(clip, member_config(shape, clip), anc, t, kd) == \
        student + flops_per_sample(anc, "clip", t)
    vis = Member("vision", 2)
    base = 3 * forward_flops(member_config(shape, vis), "vision", t) + flops_per_sample(anc, "text", t)
    assert costs.flops_per_sample_trained(vis, member_config(shape, vis), anc, t, None) == base  # LiT partner
    for obj in (kd, feat):  # KD and features read the ancestry's own vision tower too
        assert costs.flops_per_sample_trained(vis, member_config(shape, vis), anc, t, obj) == \
            base + flops_per_sample(anc, "image", t)
    split = costs.parameter_split([("text_model.embeddings.token_embedding.weight", 100),
                                   ("text_model.encoder.layers.0.mlp.fc1.weight", 7), ("logit_scale", 1)])
    assert split == {"blocks": 7, "token_table": 100, "other": 1, "total": 108}


def test_teacher_cache_gives_the_teachers_outputs_and_one_tower_steps_use_it():
    teacher = build("tiny", seed=2)
    px, ids = fake_batch(6)
    batch = {"pixel_values": px, "input_ids": ids}
    student = build("tiny", seed=3)
    plain, _ = KDStep(teacher, alpha=0.5, beta=1.0)(student, batch)
    cache = TeacherCache(teacher)
    with teacher_cache(cache):
        step = KDStep(build("tiny", seed=2), alpha=0.5, beta=1.0)  # same weights, another object: served
        assert step.cache is cache
        cached, _ = step(student, batch)
        cached_again, _ = step(student, batch)
    torch.testing.assert_close(plain, cached)
    torch.testing.assert_close(cached, cached_again)
    assert cache.describe() == {"rows": 6, "hits": 6, "misses": 6}
    with teacher_cache(cache):
        assert KDStep(build("tiny", seed=4)).cache is None  # other weights: not served
        vision = build("tiny", seed=5, kind="vision")
        for alpha, beta in ((0.0, 0.0), (0.5, 0.0), (0.0, 1.0)):
            loss, logs = TowerStep(teacher, "vision", alpha=alpha, beta=beta, feature="mse")(vision, batch)
            assert torch.isfinite(loss) and ("kd" in logs) == (alpha > 0) and ("feature" in logs) == (beta > 0)
    lit, _ = TowerStep(teacher, "text")(build("tiny", seed=5, kind="text"), batch)  # no cache: the partner runs
    assert torch.isfinite(lit)


def test_a_one_tower_model_is_measured_beside_the_partner():
    partner = build("tiny", seed=2).train()
    vision = build("tiny", seed=5, kind="vision").eval()
    clip = paired_clip(vision, partner)
    assert clip.vision_model is vision.vision_model and clip.text_model is partner.text_model
    px, ids = fake_batch(2)
    from clipforge.models.encode import image_features

    torch.testing.assert_close(image_features(clip, px), image_features(vision, px))
    with pytest.raises(ClipforgeError, match="partner"):
        paired_clip(vision, None)


def _results(a: list[float], b: list[float], items: int = 1000) -> dict:
    """A minimal results record: MM-LG and Scratch on the CLIP members of three depths, two seeds each."""
    members = ["clip-d2", "clip-d4", "clip-d6"]

    def unit(vals: list[float], d: int) -> dict:
        return {"downstream": {str(s): {"clip": {"mean_r1": vals[2 * d + s]}} for s in (0, 1)}}

    runs = {m: {name: unit(v, i) for i, name in enumerate(members)} for m, v in (("mmlg", a), ("scratch", b))}
    return {"members": members, "budget": {"seeds": [0, 1], "eval_scenes": items}, "runs": {"C/ratio": runs},
            "ptft": {name: unit(b, i) for i, name in enumerate(members)}}


def test_verdicts_hold_only_beyond_two_standard_errors():
    base = [0.30, 0.31, 0.40, 0.41, 0.50, 0.52]
    r = _results([x + 0.05 for x in base], base)
    v = verdicts.claim(r, "MM-LG beats Scratch", ("mmlg", "C/ratio"), ("scratch", "C/ratio"))
    t = v["tasks"][0]
    assert v["holds"] and t["diff"] == pytest.approx(0.05) and t["se_seeds"] == pytest.approx(0.0, abs=1e-12)
    assert "6 pairs = 3 depths × 2 seeds" in t["line"] and "1,000 test items" in t["line"]
    # +2 points on 1,000 items: the items' binomial SE (about 2.2 points) is larger than the gain
    r = _results([x + 0.02 for x in base], base)
    v = verdicts.claim(r, "c", ("mmlg", "C/ratio"), ("scratch", "C/ratio"))
    assert not v["holds"] and v["tasks"][0]["se_items"] > 0.02
    assert verdicts.claim(_results([x + 0.02 for x in base], base, items=100_000), "c", ("mmlg", "C/ratio"),
                          ("scratch", "C/ratio"))["holds"]
    # the same mean gain with seeds that disagree does not hold either
    noisy = [x + d for x, d in zip(base, (0.12, -0.06, 0.11, -0.05, 0.10, -0.07), strict=True)]
    v = verdicts.claim(_results(noisy, base, items=100_000), "c", ("mmlg", "C/ratio"), ("scratch", "C/ratio"))
    assert not v["holds"] and v["tasks"][0]["se_seeds"] > 0.02
    # the vision and text tasks have no members here: only the CLIP task is judged
    assert [t["task"] for t in v["tasks"]] == ["clip"]
    # PT-FT is read at C
    v = verdicts.claim(_results([x + 0.05 for x in base], base), "p", ("mmlg", "C/ratio"), ("ptft", "C"))
    assert v["holds"]


def test_distill_feature_term_needs_equal_projection_sizes():
    teacher, student = build("tiny", seed=2), build("tiny", seed=3)
    px, ids = fake_batch(2)
    loss, logs = Distill(alpha=0.0, beta=1.0, feature="mse").step(teacher)(student, {"pixel_values": px,
                                                                                     "input_ids": ids})
    assert torch.isfinite(loss) and "feature" in logs


def test_shards_split_the_units_deterministically_and_balance_them():
    from benchmarks.learngene.plan import Unit, assign, mine, parse_shard

    units = [Unit(f"u{i}", "B", float(c)) for i, c in enumerate((9, 7, 6, 5, 4, 3, 2, 2, 1))]
    where = assign(units, 2)
    assert where == assign(list(reversed(units)), 2)  # the same split whatever the order it is given in
    loads = [sum(u.cost for u in units if where[u.name] == k) for k in (0, 1)]
    assert abs(loads[0] - loads[1]) <= 1
    assert mine(units, (0, 2)) | mine(units, (1, 2)) == {u.name for u in units} == mine(units, None)
    assert not mine(units, (0, 2)) & mine(units, (1, 2))
    assert parse_shard("1/2") == (1, 2) and parse_shard(None) is None
    for bad in ("2/2", "x", "1-2"):
        with pytest.raises(ClipforgeError):
            parse_shard(bad)
