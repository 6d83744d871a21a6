"""OpenAI / open_clip layout import and export, checked against an independent plain-torch CLIP."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from clipforge.errors import ClipforgeError
from clipforge.models.checkpoint_files import read_state_dict
from clipforge.models.convert_openai import (
    hf_to_openai,
    is_openai_layout,
    load_openai,
    openai_to_hf,
    save_openai,
)
from clipforge.models.encode import image_features, text_features
from clipforge.models.registry import BOS_TOKEN_ID, CLIP_MEAN, EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE

# Distinct widths and head counts per tower, and proj != width, so a mixed-up axis cannot pass.
V_WIDTH, V_HEADS, V_LAYERS, PATCH, IMAGE = 32, 2, 2, 8, 32
T_WIDTH, T_HEADS, T_LAYERS, CONTEXT = 48, 4, 2, 16
PROJ = 24
HEADS = dict(vision_heads=V_HEADS, text_heads=T_HEADS)
BUFFERS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _blocks(g: torch.Generator, prefix: str, width: int, layers: int) -> dict[str, Tensor]:
    def rnd(*shape: int, std: float) -> Tensor:
        return torch.randn(*shape, generator=g) * std

    sd = {}
    for i in range(layers):
        p = f"{prefix}{i}."
        sd |= {
            p + "attn.in_proj_weight": rnd(3 * width, width, std=width ** -0.5),
            p + "attn.in_proj_bias": rnd(3 * width, std=0.1),
            p + "attn.out_proj.weight": rnd(width, width, std=width ** -0.5),
            p + "attn.out_proj.bias": rnd(width, std=0.1),
            p + "ln_1.weight": 1 + rnd(width, std=0.1),
            p + "ln_1.bias": rnd(width, std=0.1),
            p + "mlp.c_fc.weight": rnd(4 * width, width, std=width ** -0.5),
            p + "mlp.c_fc.bias": rnd(4 * width, std=0.1),
            p + "mlp.c_proj.weight": rnd(width, 4 * width, std=(4 * width) ** -0.5),
            p + "mlp.c_proj.bias": rnd(width, std=0.1),
            p + "ln_2.weight": 1 + rnd(width, std=0.1),
            p + "ln_2.bias": rnd(width, std=0.1),
        }
    return sd


def make_openai_sd(seed: int = 0) -> dict[str, Tensor]:
    """Random weights in OpenAI's layout, with the weightless buffers the JIT archives carry."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float) -> Tensor:
        return torch.randn(*shape, generator=g) * std

    grid = IMAGE // PATCH
    sd = {
        "visual.class_embedding": rnd(V_WIDTH, std=0.5),
        "visual.positional_embedding": rnd(grid * grid + 1, V_WIDTH, std=0.5),
        "visual.proj": rnd(V_WIDTH, PROJ, std=V_WIDTH ** -0.5),
        "visual.conv1.weight": rnd(V_WIDTH, 3, PATCH, PATCH, std=(3 * PATCH * PATCH) ** -0.5),
        "visual.ln_pre.weight": 1 + rnd(V_WIDTH, std=0.1),
        "visual.ln_pre.bias": rnd(V_WIDTH, std=0.1),
        "visual.ln_post.weight": 1 + rnd(V_WIDTH, std=0.1),
        "visual.ln_post.bias": rnd(V_WIDTH, std=0.1),
        "positional_embedding": rnd(CONTEXT, T_WIDTH, std=0.5),
        "text_projection": rnd(T_WIDTH, PROJ, std=T_WIDTH ** -0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "token_embedding.weight": rnd(VOCAB_SIZE, T_WIDTH, std=0.5),
        "ln_final.weight": 1 + rnd(T_WIDTH, std=0.1),
        "ln_final.bias": rnd(T_WIDTH, std=0.1),
    }
    sd |= _blocks(g, "visual.transformer.resblocks.", V_WIDTH, V_LAYERS)
    sd |= _blocks(g, "transformer.resblocks.", T_WIDTH, T_LAYERS)
    sd |= {"input_resolution": torch.tensor(IMAGE), "context_length": torch.tensor(CONTEXT),
           "vocab_size": torch.tensor(VOCAB_SIZE),
           "attn_mask": torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)}
    return sd


def weights_only(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in BUFFERS}


# ------------------------------------------------------------------ independent reference (plain torch)


def _ln(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return nn.functional.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)


def _block(x: Tensor, sd: dict[str, Tensor], p: str, heads: int, mask: Tensor | None) -> Tensor:
    b, n, w = x.shape
    d = w // heads
    h = _ln(x, sd, p + "ln_1")
    q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(w, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    x = x + att @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _ln(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def ref_image(sd: dict[str, Tensor], pixels: Tensor) -> Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    x = nn.functional.conv2d(pixels.double(), sd["visual.conv1.weight"], stride=PATCH)  # [B, W, g, g]
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln(x, sd, "visual.ln_pre")
    for i in range(V_LAYERS):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}.", V_HEADS, None)
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def ref_text(sd: dict[str, Tensor], ids: Tensor) -> Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    causal = torch.full((CONTEXT, CONTEXT), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(T_LAYERS):
        x = _block(x, sd, f"transformer.resblocks.{i}.", T_HEADS, causal)
    x = _ln(x, sd, "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


def sample_inputs() -> tuple[Tensor, Tensor]:
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    ids = torch.full((2, CONTEXT), PAD_TOKEN_ID)
    for row, toks in enumerate([[320, 1929, 539, 49000], [7]]):
        seq = [BOS_TOKEN_ID, *toks, EOS_TOKEN_ID]
        ids[row, : len(seq)] = torch.tensor(seq)
    return pixels, ids


# ----------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def sd() -> dict[str, Tensor]:
    return make_openai_sd()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_import_matches_reference(sd: dict[str, Tensor], tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
    model = load_openai(path, **HEADS)
    pixels, ids = sample_inputs()
    with torch.no_grad():
        img, txt = image_features(model, pixels), text_features(model, ids)
    torch.testing.assert_close(img, ref_image(sd, pixels).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_text(sd, ids).float(), atol=1e-5, rtol=1e-5)
    cfg = model.config
    assert cfg.vision_config.hidden_act == cfg.text_config.hidden_act == "quick_gelu"
    assert (cfg.text_config.eos_token_id, cfg.text_config.bos_token_id, cfg.text_config.pad_token_id) == (
        EOS_TOKEN_ID, BOS_TOKEN_ID, PAD_TOKEN_ID)
    assert tuple(cfg.vision_config.image_mean) == CLIP_MEAN
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size, cfg.projection_dim) == (IMAGE, PATCH, PROJ)
    assert (cfg.text_config.max_position_embeddings, cfg.text_config.intermediate_size) == (CONTEXT, 4 * T_WIDTH)
    # Exporting the loaded model gives back every weight, bit for bit.
    back = hf_to_openai(model)
    want = weights_only(sd)
    assert back.keys() == want.keys()
    assert all(torch.equal(back[k], want[k]) for k in want)


def test_round_trip_is_bit_exact(sd: dict[str, Tensor], tmp_path: Path) -> None:
    cfg, hf = openai_to_hf(sd, name="toy", **HEADS)
    assert cfg.architecture_name == "toy"
    back = hf_to_openai(hf)
    want = weights_only(sd)
    assert back.keys() == want.keys()
    for k in want:
        assert torch.equal(back[k], want[k]), k
    for suffix in (".safetensors", ".pt"):
        saved = read_state_dict(save_openai(hf, tmp_path / f"out{suffix}"))
        assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)


def test_gelu_flag_and_layout_detection(sd: dict[str, Tensor]) -> None:
    cfg, hf = openai_to_hf(sd, quick_gelu=False, **HEADS)
    assert cfg.vision_config.hidden_act == "gelu"
    assert is_openai_layout(sd) and not is_openai_layout(hf)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this would run a shell command
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, path)
    with pytest.raises(ClipforgeError, match="evil.pt.*pickled code") as err:
        load_openai(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_shape_mismatch_names_key(sd: dict[str, Tensor], tmp_path: Path) -> None:
    bad = dict(sd)
    key = "transformer.resblocks.1.mlp.c_fc.weight"
    bad[key] = bad[key][:-4]
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ClipforgeError, match=key.replace(".", r"\.")) as err:
        load_openai(path, **HEADS)
    assert "bad.safetensors" in str(err.value) and "(188, 48)" in str(err.value)


def test_wrapped_ddp_checkpoint(sd: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert read_state_dict(path).keys() == sd.keys()
    model = load_openai(path, **HEADS)
    pixels, _ = sample_inputs()
    with torch.no_grad():
        torch.testing.assert_close(image_features(model, pixels), ref_image(sd, pixels).float(), atol=1e-5, rtol=1e-5)


def save_torchscript_archive(sd: dict[str, Tensor], path: Path) -> Path:
    """`sd` as a TorchScript archive, as OpenAI's `.pt` releases are: a module tree whose state_dict has its keys."""

    class Root(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    root = Root()
    for key, value in sd.items():
        *mods, leaf = key.split(".")
        owner: nn.Module = root
        for m in mods:
            if not hasattr(owner, m):
                owner.add_module(m, nn.Module())
            owner = getattr(owner, m)
        owner.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive(sd: dict[str, Tensor], tmp_path: Path) -> None:
    path = save_torchscript_archive(sd, tmp_path / "ViT-toy.pt")
    got = read_state_dict(path)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_user_errors(sd: dict[str, Tensor], tmp_path: Path) -> None:
    with pytest.raises(ClipforgeError, match="nowhere.pt"):
        read_state_dict(tmp_path / "nowhere.pt")
    with pytest.raises(ClipforgeError, match="ResNet CLIP is not supported"):
        openai_to_hf({"visual.layer1.0.conv1.weight": torch.zeros(1, 1, 1, 1), **sd}, **HEADS)
    with pytest.raises(ClipforgeError, match="'visual.extra_a'.*'visual.extra_b'"):
        openai_to_hf({**sd, "visual.extra_a": torch.zeros(1), "visual.extra_b": torch.zeros(1)}, **HEADS)
    with pytest.raises(ClipforgeError, match="vision_heads"):
        openai_to_hf(sd)  # width 32 // 64 = 0 heads: the caller must say
    missing = {k: v for k, v in sd.items() if k != "ln_final.bias"}
    with pytest.raises(ClipforgeError, match="'ln_final.bias'"):
        openai_to_hf(missing, **HEADS)
    garbage = tmp_path / "junk.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipforgeError, match="junk.pt"):
        read_state_dict(garbage)
