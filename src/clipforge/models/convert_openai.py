"""Import from, and export to, the OpenAI / open_clip CLIP state-dict layout.

OpenAI's released ViT CLIPs and open_clip's `state_dict()` share one layout (`visual.conv1.weight`,
`transformer.resblocks.{i}.attn.in_proj_weight`, `text_projection` as a [width, proj] matrix, ...).
`openai_to_hf` maps it onto a Hugging Face `CLIPModel`, inferring the architecture from tensor
shapes; `hf_to_openai` is its exact inverse, so a round trip reproduces every tensor bit for bit.
The files themselves are read, as data only, by `models.checkpoint_files.read_state_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from ..errors import ClipforgeError
from .checkpoint_files import read_state_dict
from .registry import build, make_config

# Tensors that map one to one, same shape (OpenAI name -> HF name).
_DIRECT = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: HF's spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# OpenAI multiplies `x @ proj` ([width, proj]); nn.Linear stores [proj, width].
_TRANSPOSED = {
    "visual.proj": "visual_projection.weight",
    "text_projection": "text_projection.weight",
}
# Per-block tensors other than the fused q/k/v projection (suffix after the block prefix).
_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOWERS = {"visual.transformer.resblocks.": "vision_model.encoder.layers.",
           "transformer.resblocks.": "text_model.encoder.layers."}
_QKV = ("q_proj", "k_proj", "v_proj")
# Buffers that carry no weights: the JIT archives' scalars and the causal mask open_clip rebuilds.
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}

_DIRECT_REV = {v: k for k, v in _DIRECT.items()}
_TRANSPOSED_REV = {v: k for k, v in _TRANSPOSED.items()}
_BLOCK_REV = {v: k for k, v in _BLOCK.items()}
_TOWERS_REV = {v: k for k, v in _TOWERS.items()}
_OPENAI_MARKERS = ("visual.conv1.weight", "token_embedding.weight", "positional_embedding", "text_projection",
                   "visual.layer1.0.conv1.weight")


# ----------------------------------------------------------------------------------------------- import


def is_openai_layout(sd: Mapping[str, Any]) -> bool:
    """True when `sd` uses OpenAI / open_clip names (HF names never match these keys exactly)."""
    return any(k in sd for k in _OPENAI_MARKERS)


def _need(sd: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    if key not in sd:
        raise ClipforgeError(f"checkpoint lacks the tensor {key!r}")
    t = sd[key]
    if t.ndim != ndim:
        raise ClipforgeError(f"tensor {key!r} has shape {tuple(t.shape)}; expected {ndim} dimensions")
    return t


def _count_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if not idx:
        raise ClipforgeError(f"checkpoint has no transformer blocks under {prefix!r}")
    return max(idx) + 1  # a gap shows up below as a missing tensor, named


def _heads(width: int, heads: int | None, tower: str) -> int:
    h = heads if heads is not None else width // 64  # OpenAI's rule: 64-wide attention heads
    if h <= 0 or width % h:
        raise ClipforgeError(f"cannot split {tower} width {width} into {h} attention heads; "
                             f"pass {tower}_heads= with the checkpoint's head count")
    return h


def infer_config(sd: Mapping[str, Tensor], name: str | None = None, vision_heads: int | None = None,
                 text_heads: int | None = None, quick_gelu: bool = True) -> CLIPConfig:
    """The `CLIPConfig` of an OpenAI-layout ViT CLIP, read off its tensor shapes."""
    if any(k.startswith("visual.layer1.") for k in sd):
        raise ClipforgeError("ResNet CLIP is not supported (only ViT checkpoints can be imported)")
    conv = _need(sd, "visual.conv1.weight", 4)
    v_width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    n_pos = _need(sd, "visual.positional_embedding", 2).shape[0]
    grid = math.isqrt(max(n_pos - 1, 0))
    if grid * grid + 1 != n_pos:
        raise ClipforgeError(f"'visual.positional_embedding' has {n_pos} rows, not a square grid plus one")
    vproj = _need(sd, "visual.proj", 2)
    tproj = _need(sd, "text_projection", 2)
    if vproj.shape[1] != tproj.shape[1]:
        raise ClipforgeError(f"'visual.proj' projects to {vproj.shape[1]} but 'text_projection' to "
                             f"{tproj.shape[1]}; both towers must share one embedding size")
    t_width = _need(sd, "ln_final.weight", 1).shape[0]
    act = "quick_gelu" if quick_gelu else "gelu"
    vp, tp = "visual.transformer.resblocks.", "transformer.resblocks."
    spec: dict[str, Any] = {
        "projection_dim": int(tproj.shape[1]),
        "vision_config": {
            "hidden_size": int(v_width), "num_channels": int(channels), "patch_size": int(patch),
            "image_size": int(grid * patch), "num_hidden_layers": _count_blocks(sd, vp),
            "intermediate_size": int(_need(sd, vp + "0.mlp.c_fc.weight", 2).shape[0]),
            "num_attention_heads": _heads(v_width, vision_heads, "vision"), "hidden_act": act,
        },
        "text_config": {
            "hidden_size": int(t_width), "vocab_size": int(_need(sd, "token_embedding.weight", 2).shape[0]),
            "max_position_embeddings": int(_need(sd, "positional_embedding", 2).shape[0]),
            "num_hidden_layers": _count_blocks(sd, tp),
            "intermediate_size": int(_need(sd, tp + "0.mlp.c_fc.weight", 2).shape[0]),
            "num_attention_heads": _heads(t_width, text_heads, "text"), "hidden_act": act,
        },
    }
    if "logit_scale" in sd:
        spec["logit_scale_init_value"] = float(sd["logit_scale"].float().reshape(-1)[0])
    if name:
        spec["name"] = name
    return make_config(spec)  # adds CLIP's special-token ids and image mean/std


def _convert_key(key: str, t: Tensor, out: dict[str, Tensor], origin: dict[str, str]) -> bool:
    """Map one OpenAI tensor into `out` (HF names); False when `key` is not an OpenAI name."""
    def put(hf: str, value: Tensor) -> None:
        out[hf] = value
        origin[hf] = key

    if key in _DIRECT:
        put(_DIRECT[key], t)
        return True
    if key in _TRANSPOSED:
        put(_TRANSPOSED[key], t.t().contiguous() if t.ndim == 2 else t)
        return True
    for oa_prefix, hf_prefix in _TOWERS.items():
        m = re.fullmatch(re.escape(oa_prefix) + r"(\d+)\.(.+)", key)
        if not m:
            continue
        block, rest = f"{hf_prefix}{m.group(1)}.", m.group(2)
        if rest in _BLOCK:
            put(block + _BLOCK[rest], t)
            return True
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            if t.shape[0] % 3:
                raise ClipforgeError(f"tensor {key!r} has shape {tuple(t.shape)}; its first size must split in three")
            # clone: chunks are views of one storage, which safetensors refuses to save
            for proj, part in zip(_QKV, t.chunk(3, dim=0)):
                put(f"{block}self_attn.{proj}.{kind}", part.clone())
            return True
    return False


def _expected_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    # The meta device allocates nothing: the shapes of a ViT-L come for free.
    with torch.device("meta"):
        model = CLIPModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def openai_to_hf(sd: Mapping[str, Tensor], name: str | None = None, vision_heads: int | None = None,
                 text_heads: int | None = None, quick_gelu: bool = True) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Config and HF-named tensors of an OpenAI-layout ViT CLIP state dict.

    Heads default to width // 64 (OpenAI's rule); pass `vision_heads`/`text_heads` otherwise.
    `quick_gelu=False` for open_clip models trained with plain GELU.
    """
    cfg = infer_config(sd, name, vision_heads, text_heads, quick_gelu)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown = [k for k, t in sd.items()
               if k.rsplit(".", 1)[-1] not in _IGNORED and not _convert_key(k, t, out, origin)]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        names = ", ".join(map(repr, unknown[:3]))
        raise ClipforgeError(f"unknown tensors in an OpenAI-layout checkpoint: {names}{more}")
    expected = _expected_shapes(cfg)
    for hf_key, shape in expected.items():
        if hf_key not in out:
            raise ClipforgeError(f"checkpoint lacks the tensor {_openai_name(hf_key)!r}")
        got = tuple(out[hf_key].shape)
        if got != shape:
            raise ClipforgeError(_shape_message(origin[hf_key], hf_key, got, shape))
    extra = sorted(origin[k] for k in out if k not in expected)
    if extra:
        raise ClipforgeError(f"tensors the inferred architecture has no place for: {', '.join(map(repr, extra[:3]))}")
    return cfg, out


def _shape_message(oa_key: str, hf_key: str, got: tuple[int, ...], want: tuple[int, ...]) -> str:
    return (f"tensor {oa_key!r} (as {hf_key!r}) has shape {got} but the architecture read from the "
            f"checkpoint needs {want}")


def load_openai(path: str | Path, **kw: Any) -> CLIPModel:
    """A `CLIPModel` holding the weights of an OpenAI / open_clip checkpoint file (see `openai_to_hf`)."""
    return load_state_dict_openai(read_state_dict(path), str(path), **kw)


def load_state_dict_openai(sd: Mapping[str, Tensor], path: str, **kw: Any) -> CLIPModel:
    """A `CLIPModel` of an OpenAI-layout state dict read from `path` (named in errors)."""
    try:
        cfg, hf = openai_to_hf(sd, **kw)
    except ClipforgeError as e:
        msg = str(e)
        raise ClipforgeError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    model = build(cfg)
    # The shapes were checked against this very config; a clash here would be a converter bug.
    model.load_state_dict(hf, strict=True)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------- export


def _openai_name(hf_key: str) -> str:
    """The OpenAI name of an HF tensor (q/k/v name their fused `in_proj` tensor)."""
    if hf_key in _DIRECT_REV:
        return _DIRECT_REV[hf_key]
    if hf_key in _TRANSPOSED_REV:
        return _TRANSPOSED_REV[hf_key]
    for hf_prefix, oa_prefix in _TOWERS_REV.items():
        m = re.fullmatch(re.escape(hf_prefix) + r"(\d+)\.(.+)", hf_key)
        if not m:
            continue
        rest = m.group(2)
        if rest in _BLOCK_REV:
            return f"{oa_prefix}{m.group(1)}.{_BLOCK_REV[rest]}"
        qkv = re.fullmatch(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
        if qkv:
            return f"{oa_prefix}{m.group(1)}.attn.in_proj_{qkv.group(2)}"
    raise ClipforgeError(f"tensor {hf_key!r} has no counterpart in the OpenAI CLIP layout")


def hf_to_openai(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI-layout tensors of an HF CLIP (or one tower with its projection): the exact inverse of `openai_to_hf`."""
    sd = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
          else model_or_state_dict)
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for key, t in sd.items():
        t = t.detach()
        oa = _openai_name(key)
        if key in _TRANSPOSED_REV:
            out[oa] = t.t().contiguous()
        elif oa.endswith((".attn.in_proj_weight", ".attn.in_proj_bias")):
            fused.setdefault(oa, {})[key.split(".")[-2]] = t
        else:
            out[oa] = t
    for oa, parts in fused.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ClipforgeError(f"cannot rebuild {oa!r}: the state dict lacks its {', '.join(missing)} part")
        out[oa] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def save_openai(model: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write `model` in the OpenAI layout as `.safetensors` or a plain-tensor `.pt/.pth/.bin`."""
    path = Path(path)
    sd = {k: v.contiguous() for k, v in hf_to_openai(model).items()}
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ClipforgeError(f"{path}: unknown checkpoint extension {suffix!r}; use .safetensors, .pt, .pth or .bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path
