"""The released CLIP-MoE layout: import against an independent plain-torch forward, exact export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.errors import ClipforgeError
from clipforge.models import io
from clipforge.models.clip_moe.convert_released import export_released, is_released_layout, load_released
from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID, VOCAB_SIZE

WIDTH, HEADS, LAYERS, PATCH, IMAGE, PROJ, CONTEXT, EXPERTS = 32, 2, 2, 8, 32, 24, 248, 4
SPLIT = 20  # Long-CLIP: positions < 20 from `positional_embedding`, the rest from `positional_embedding_res`
VISION_MOE, TEXT_MOE = [1], [0, 1]  # the released code makes the last blocks MoE; block 0 of vision is dense
HEADS_KW = dict(vision_heads=HEADS, text_heads=HEADS)


def _released_checkpoint(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.1) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    def block(prefix: str, moe: bool) -> dict[str, Tensor]:
        sd = {f"{prefix}attn.in_proj_weight": rnd(3 * WIDTH, WIDTH, scale=0.2),
              f"{prefix}attn.in_proj_bias": rnd(3 * WIDTH),
              f"{prefix}attn.out_proj.weight": rnd(WIDTH, WIDTH, scale=0.2), f"{prefix}attn.out_proj.bias": rnd(WIDTH),
              f"{prefix}ln_1.weight": 1 + rnd(WIDTH), f"{prefix}ln_1.bias": rnd(WIDTH),
              f"{prefix}ln_2.weight": 1 + rnd(WIDTH), f"{prefix}ln_2.bias": rnd(WIDTH)}
        ffns = [f"{prefix}experts.{e}." for e in range(EXPERTS)] if moe else [f"{prefix}mlp."]
        for f in ffns:
            sd.update({f"{f}c_fc.weight": rnd(4 * WIDTH, WIDTH, scale=0.2), f"{f}c_fc.bias": rnd(4 * WIDTH),
                       f"{f}c_proj.weight": rnd(WIDTH, 4 * WIDTH, scale=0.2), f"{f}c_proj.bias": rnd(WIDTH)})
        if moe:
            sd[f"{prefix}gate.weight"] = rnd(EXPERTS, WIDTH, scale=1.0)
        return sd

    grid = IMAGE // PATCH
    sd = {"visual.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH), "visual.class_embedding": rnd(WIDTH),
          "visual.positional_embedding": rnd(grid * grid + 1, WIDTH), "visual.ln_pre.weight": 1 + rnd(WIDTH),
          "visual.ln_pre.bias": rnd(WIDTH), "visual.ln_post.weight": 1 + rnd(WIDTH), "visual.ln_post.bias": rnd(WIDTH),
          "visual.proj": rnd(WIDTH, PROJ), "token_embedding.weight": rnd(VOCAB_SIZE, WIDTH),
          "positional_embedding": rnd(CONTEXT, WIDTH), "positional_embedding_res": rnd(CONTEXT, WIDTH),
          "ln_final.weight": 1 + rnd(WIDTH), "ln_final.bias": rnd(WIDTH), "text_projection": rnd(WIDTH, PROJ),
          "logit_scale": torch.tensor(math.log(1 / 0.07))}
    for l in range(LAYERS):
        sd.update(block(f"visual.transformer.resblocks.{l}.", l in VISION_MOE))
        sd.update(block(f"transformer.resblocks.{l}.", l in TEXT_MOE))
    return sd


# ------------------------------------------------------------------ independent reference (OpenAI-style)


def _ln(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _attention(x: Tensor, sd: dict[str, Tensor], p: str, causal: bool) -> Tensor:
    b, t, d = x.shape
    q, k, v = (x @ sd[f"{p}attn.in_proj_weight"].T + sd[f"{p}attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (y.reshape(b, t, HEADS, d // HEADS).transpose(1, 2) for y in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // HEADS)
    if causal:
        scores = scores + torch.full((t, t), float("-inf")).triu(1)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return out @ sd[f"{p}attn.out_proj.weight"].T + sd[f"{p}attn.out_proj.bias"]


def _ffn(h: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    hidden = _quick_gelu(h @ sd[f"{p}c_fc.weight"].T + sd[f"{p}c_fc.bias"])
    return hidden @ sd[f"{p}c_proj.weight"].T + sd[f"{p}c_proj.bias"]


def _moe_ffn(h: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    """gate → softmax → top-2 → renormalise → Σ g · expert(h), every expert evaluated densely."""
    probs = (h @ sd[f"{p}gate.weight"].T).float().softmax(dim=-1)
    g, idx = probs.topk(2, dim=-1)
    g = g / g.sum(dim=-1, keepdim=True)
    outs = torch.stack([_ffn(h, sd, f"{p}experts.{e}.") for e in range(EXPERTS)], dim=-2)  # [..., E, d]
    picked = outs.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, h.shape[-1]))  # [..., 2, d]
    return (g.unsqueeze(-1) * picked).sum(dim=-2)


def _transformer(x: Tensor, sd: dict[str, Tensor], prefix: str, causal: bool) -> Tensor:
    for l in range(LAYERS):
        p = f"{prefix}.resblocks.{l}."
        x = x + _attention(_ln(x, sd, p + "ln_1"), sd, p, causal)
        h = _ln(x, sd, p + "ln_2")
        x = x + (_moe_ffn(h, sd, p) if f"{p}gate.weight" in sd else _ffn(h, sd, p + "mlp."))
    return x


def _ref_image(sd: dict[str, Tensor], pixels: Tensor) -> Tensor:
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = x + sd["visual.positional_embedding"]
    x = _transformer(_ln(x, sd, "visual.ln_pre"), sd, "visual.transformer", causal=False)
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def _ref_text(sd: dict[str, Tensor], ids: Tensor) -> Tensor:
    t = ids.shape[1]
    first = (torch.arange(t) < SPLIT).unsqueeze(-1).float()
    pos = sd["positional_embedding"][:t] * first + sd["positional_embedding_res"][:t] * (1 - first)
    x = _transformer(sd["token_embedding.weight"][ids] + pos, sd, "transformer", causal=True)
    x = _ln(x, sd, "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def _inputs() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=g)
    ids = torch.zeros(3, 32, dtype=torch.long)
    for row, eos in enumerate([5, 25, 31]):  # end-of-text before and after the position split
        ids[row, 0] = BOS_TOKEN_ID
        ids[row, 1:eos] = torch.randint(1, 49000, (eos - 1,), generator=g)
        ids[row, eos] = EOS_TOKEN_ID
    return pixels, ids


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    sd = _released_checkpoint()
    path = tmp_path_factory.mktemp("released") / "clip_moe.pt"
    torch.save(sd, path)
    return sd, path


def test_import_matches_the_reference_forward(released):
    sd, path = released
    assert is_released_layout(sd)
    model = load_released(path, top_k=2, **HEADS_KW)
    cfg = model.config
    assert (cfg.num_experts, cfg.top_k) == (EXPERTS, 2)
    assert (cfg.moe_layers_vision, cfg.moe_layers_text) == (VISION_MOE, TEXT_MOE)
    assert cfg.text_position_split == SPLIT and cfg.text_config.hidden_act == "quick_gelu"
    assert len(cfg.expert_sources) == EXPERTS
    pixels, ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output, _ref_image(sd, pixels),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.get_text_features(ids).pooler_output, _ref_text(sd, ids), rtol=0, atol=1e-5)


def test_export_reproduces_every_tensor(released, tmp_path):
    sd, path = released
    model = load_released(path, **HEADS_KW)
    out = export_released(model)
    assert out.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(out[k], v), k
    # The imported model saves and reloads with its two position tables and routing intact.
    reloaded = io.load(io.save(model, tmp_path / "moe"))
    again = export_released(reloaded)
    assert all(torch.equal(again[k], v) for k, v in sd.items())


def test_import_names_a_missing_expert(released, tmp_path):
    sd = dict(released[0])
    del sd["transformer.resblocks.1.experts.3.c_proj.bias"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(ClipforgeError, match=r"transformer\.resblocks\.1\.experts\.3\.c_proj\.bias"):
        load_released(path, **HEADS_KW)


def test_cli_import_detects_the_released_layout(released, tmp_path, capsys):
    """`clipforge import` writes a CLIP-MoE directory that `clipforge.load` rebuilds with its experts."""
    from clipforge.cli import main
    from clipforge.models.io import load

    sd, path = released
    out = tmp_path / "moe"
    assert main(["import", str(path), "--out", str(out), "--vision-heads", str(HEADS),
                 "--text-heads", str(HEADS), "--top-k", "2"]) == 0
    model = load(out)
    assert model.config.num_experts == EXPERTS and model.config.top_k == 2
    pixels, ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixels).pooler_output, _ref_image(sd, pixels),
                                   rtol=0, atol=1e-5)
