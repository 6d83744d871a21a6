"""MM-LG across towers of different widths and depths, and into narrower descendants (docs/methods.md B.2b).

The ancestry is a tiny CLIP whose towers differ as real ones do (vision 3 × 48, text 2 × 32): the multimodal
block is stored at the vision tower's shape and read by the text tower through each construction.
"""

from __future__ import annotations

import pytest
import torch
from helpers import fake_batch, unequal_spec
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from clipforge.errors import ClipforgeError
from clipforge.learngene.auxnet import build_auxnet
from clipforge.learngene.config import LearngeneConfig
from clipforge.learngene.descend import descend
from clipforge.learngene.learngene import Learngene
from clipforge.learngene.widths import AXES, BlockShape, Narrowing, TowerMap, fit_projection, scaled, tensor_shapes
from clipforge.models.encode import image_features, text_features
from clipforge.models.io import save
from clipforge.models.params import count_params
from clipforge.models.registry import build

MODES = ("mmlg", "tleg_per_tower", "shared_only")


@pytest.fixture(scope="module")
def ancestry():
    return build(unequal_spec(), seed=0).eval()


def _config(ancestry, **choices) -> LearngeneConfig:
    return LearngeneConfig.from_ancestry(ancestry.config, init="lstsq", **choices)


@pytest.mark.parametrize("construction", ["select", "project"])
def test_each_construction_is_a_co_isometry(construction):
    shared, tower = BlockShape(48, 3, 96), BlockShape(32, 2, 64)
    proj = fit_projection(torch.randn(32, 32), torch.randn(32, 48)) if construction == "project" else None
    cmap = TowerMap(shared, tower, construction, proj)
    g = torch.Generator().manual_seed(0)
    for key, shape in tensor_shapes(tower).items():
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        # C Cᵀ = I: writing a tower tensor back at the shared shape and reading it again changes nothing
        assert torch.allclose(cmap.apply(key, cmap.adjoint(key, x)), x, atol=1e-6), key
        assert tuple(cmap.adjoint(key, x).shape) == tensor_shapes(shared)[key]
    if construction == "select":  # the narrow view is a sub-block of the shared tensor: whole heads, spread evenly
        w = torch.arange(48 * 48, dtype=torch.float32).reshape(48, 48)
        heads = torch.arange(32)  # heads 0 and 1 of 3 (uniform over heads: 0·3//2, 1·3//2), all 16 channels each
        assert torch.equal(cmap.apply("q_weight", w), w[heads][:, (torch.arange(32) * 48) // 32])
    else:
        assert torch.allclose(proj @ proj.T, torch.eye(32), atol=1e-5)


@pytest.mark.parametrize("construction", ["select", "project"])
@pytest.mark.parametrize("mode", MODES)
def test_least_squares_reproduces_an_ancestry_built_on_the_construction_basis(ancestry, construction, mode):
    cfg = _config(ancestry, construction=construction, mode=mode)
    assert (cfg.vision_width, cfg.text_width, cfg.shared_shape.width) == (48, 32, 48)
    source = Learngene(cfg, ancestry=ancestry)
    with torch.no_grad():
        for p in source.blocks.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    on_basis = descend(source, 3, 2)  # every layer a·C(first) + b·second exactly
    fitted = Learngene(cfg, ancestry=on_basis)
    assert max(fitted.fit_record["relative_residual"].values()) < 1e-6
    state = on_basis.state_dict()
    for name, value in descend(fitted, 3, 2).state_dict().items():
        assert torch.allclose(value, state[name], atol=1e-4), name
    # an ancestry not on the basis is fitted, not reproduced
    assert min(Learngene(cfg, ancestry=ancestry).fit_record["relative_residual"].values()) > 1e-3 or \
        mode == "tleg_per_tower"


@pytest.mark.parametrize("construction", ["select", "project"])
def test_auxnet_every_learngene_tensor_gets_a_gradient_and_the_shared_block_is_shared(ancestry, construction):
    lg = Learngene(_config(ancestry, construction=construction), ancestry=ancestry)
    aux = build_auxnet(lg).train()
    pixels, ids = fake_batch(4)
    aux(input_ids=ids, pixel_values=pixels, return_loss=True).loss.backward()
    missing = [n for n, p in lg.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert "projection_text" in dict(lg.named_buffers()) if construction == "project" else True
    assert all(not p.requires_grad for n, p in lg.named_buffers())
    # the text tower's layer-0 q is C(θ_MM): the multimodal tensor is used by both towers
    v = aux.vision_model.encoder.layers[0].self_attn.q_proj.weight
    t = aux.text_model.encoder.layers[0].self_attn.q_proj.weight
    assert v.shape == (48, 48) and t.shape == (32, 32)
    assert torch.allclose(t, lg.tower_map("text").apply("q_weight", lg.theta_mm[0]["q_weight"]))


def test_project_counts_its_projection_and_saves_it(ancestry, tmp_path):
    sel = Learngene(_config(ancestry, construction="select"), ancestry=ancestry)
    proj = Learngene(_config(ancestry, construction="project"), ancestry=ancestry)
    assert proj.num_parameters() - sel.num_parameters() == 32 * 48
    assert proj.parameter_breakdown()["projections"] == 32 * 48
    proj.save(tmp_path / "lg")
    back = Learngene.load(tmp_path / "lg")
    assert torch.equal(back.projection_text, proj.projection_text)
    for a, b in zip(descend(back, 2, 1).state_dict().values(), descend(proj, 2, 1).state_dict().values()):
        assert torch.equal(a, b)


def test_a_narrower_learngene_starts_from_the_ancestrys_selected_layers(ancestry):
    cfg = _config(ancestry, vision_width=32, text_width=16)
    assert (cfg.tower_shape("vision"), cfg.tower_shape("text")) == (BlockShape(32, 2, 64), BlockShape(16, 1, 32))
    lg = Learngene(cfg, ancestry=ancestry)
    assert lg.non_block["text_token_embedding"].shape == (ancestry.config.text_config.vocab_size, 16)
    cut = Narrowing(BlockShape(32, 2, 64), BlockShape(16, 1, 32))
    assert torch.equal(lg.non_block["text_final_ln_weight"],
                       cut.non_block("x", ancestry.text_model.final_layer_norm.weight.detach()))
    assert max(lg.fit_record["relative_residual"].values()) < 1.0
    with pytest.raises(ClipforgeError, match="wider than the ancestry"):
        _config(ancestry, vision_width=64)
    with pytest.raises(ClipforgeError, match="not a multiple of the head size 16"):
        _config(ancestry, text_width=24)


@pytest.mark.parametrize("kind, dv, dt, wv, wt", [
    ("clip", 2, 1, 32, 16), ("clip", 3, 2, None, None), ("clip", 1, 2, 48, 16), ("vision", 2, None, 16, None),
    ("text", None, 1, None, 16), ("text", None, 2, None, None)])
def test_descendants_load_in_plain_transformers_with_the_same_embeddings_and_are_never_larger(
        ancestry, tmp_path, kind, dv, dt, wv, wt):
    lg = Learngene(_config(ancestry, construction="project"), ancestry=ancestry)
    model = descend(lg, dv, dt, kind, wv, wt)
    save(model, tmp_path / "d")
    cls = {"clip": CLIPModel, "vision": CLIPVisionModelWithProjection, "text": CLIPTextModelWithProjection}[kind]
    plain = cls.from_pretrained(tmp_path / "d").eval()
    pixels, ids = fake_batch(3)
    with torch.no_grad():
        if kind in ("clip", "vision"):
            assert torch.allclose(image_features(model, pixels), image_features(plain, pixels), atol=1e-6)
        if kind in ("clip", "text"):
            assert torch.allclose(text_features(model, ids), text_features(plain, ids), atol=1e-6)
    # never larger than the ancestry's tower at the same depth
    spec = unequal_spec()
    for tower, depth in (("vision", dv), ("text", dt)):
        if depth is None:
            continue
        spec[f"{tower}_config"]["num_hidden_layers"] = depth
        ref = count_params(build(spec))[tower]
        assert count_params(model)[tower] <= ref, (tower, count_params(model)[tower], ref)
    if wv:
        assert model.config.to_dict().get("vision_config", model.config.to_dict())["hidden_size"] == wv


def test_scaled_keeps_the_head_size_and_the_mlp_ratio():
    assert scaled(BlockShape(768, 12, 3072), 512) == BlockShape(512, 8, 2048)
    assert scaled(BlockShape(512, 8, 2048), 320) == BlockShape(320, 5, 1280)
    with pytest.raises(ClipforgeError, match="head size 64"):
        scaled(BlockShape(768, 12, 3072), 500)
    assert set(AXES) == set(tensor_shapes(BlockShape(8, 1, 16)))


def test_crossing_shapes_and_mean_init_across_widths_are_refused(ancestry):
    with pytest.raises(ClipforgeError, match="cross"):
        LearngeneConfig(vision_width=48, vision_heads=3, vision_mlp=64, text_width=32, text_heads=2, text_mlp=96)
    with pytest.raises(ClipforgeError, match="towers of one block shape"):
        Learngene(LearngeneConfig.from_ancestry(ancestry.config, init="mean"), ancestry=ancestry)
    legacy = LearngeneConfig.from_dict({"width": 32, "heads": 2, "mlp": 64})
    assert legacy.tower_shape("vision") == legacy.tower_shape("text") == BlockShape(32, 2, 64)
