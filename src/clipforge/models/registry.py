"""Architecture registry: named CLIP shapes stored as JSON files in `configs/`.

A registry entry holds Hugging Face `CLIPConfig` fields (`projection_dim`, `vision_config`,
`text_config`, ...) plus a human `description`. `build()` turns a name (or a config) into a seeded,
randomly initialised `transformers` model: a full `CLIPModel`, or one tower with its projection.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedModel,
)

from ..errors import ClipforgeError

Kind = Literal["clip", "vision", "text"]

# OpenAI CLIP's BPE special tokens. Padding is id 0 ("!"), as OpenAI and open_clip pad; HF pools the
# text tower at the first `eos_token_id`, which equals OpenAI's argmax pooling for these ids.
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
VOCAB_SIZE = 49408
# OpenAI CLIP's normalisation; recorded in every vision config so weights never travel without it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    files = resources.files("clipforge.models").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def get_config_dict(name: str) -> dict[str, Any]:
    """The registry entry `name` as a dict (a fresh copy)."""
    names = list_models()
    if name not in names:
        raise ClipforgeError(f"unknown architecture {name!r}; known: {', '.join(names)}")
    path = resources.files("clipforge.models").joinpath("configs").joinpath(f"{name}.json")
    return json.loads(path.read_text())


def _text_defaults(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID,
               pad_token_id=PAD_TOKEN_ID)
    out.update(d)
    return out


def _vision_defaults(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    out.update(d)
    return out


def make_config(spec: str | dict[str, Any] | CLIPConfig) -> CLIPConfig:
    """A `CLIPConfig` from a registry name, a registry-style dict, or a config (returned as is)."""
    if isinstance(spec, CLIPConfig):
        return spec
    d = get_config_dict(spec) if isinstance(spec, str) else dict(spec)
    name = spec if isinstance(spec, str) else d.get("name")
    d.pop("description", None)
    d.pop("name", None)
    for key in ("vision_config", "text_config"):
        if key not in d:
            raise ClipforgeError(f"architecture config is missing the field {key!r}")
    cfg = CLIPConfig(
        text_config=_text_defaults(d.pop("text_config")),
        vision_config=_vision_defaults(d.pop("vision_config")),
        **d,
    )
    cfg.text_config.projection_dim = cfg.projection_dim
    cfg.vision_config.projection_dim = cfg.projection_dim
    if name:
        cfg.architecture_name = name
    return cfg


def tower_config(cfg: CLIPConfig, kind: Kind) -> CLIPConfig | CLIPVisionConfig | CLIPTextConfig:
    """The config of one tower (with its projection size) or the whole CLIP config."""
    if kind == "clip":
        return cfg
    sub = CLIPVisionConfig(**cfg.vision_config.to_dict()) if kind == "vision" else CLIPTextConfig(
        **cfg.text_config.to_dict())
    sub.projection_dim = cfg.projection_dim
    if getattr(cfg, "architecture_name", None):
        sub.architecture_name = cfg.architecture_name
    return sub


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPModel,
    "vision": CLIPVisionModelWithProjection,
    "text": CLIPTextModelWithProjection,
}


# Attention kernels: "sdpa" (torch's scaled_dot_product_attention: flash / memory-efficient kernels on CPU
# and CUDA, the default and the faster in benchmarks/perf) or "eager" (explicit softmax(QK^T)V).
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DEFAULT_ATTN = "sdpa"


def build(spec: str | dict[str, Any] | CLIPConfig, seed: int = 0, kind: Kind = "clip",
          attn_implementation: str = DEFAULT_ATTN) -> PreTrainedModel:
    """A randomly initialised model of architecture `spec`, seeded so the same call gives the same weights.

    `kind` picks the full CLIP (`CLIPModel`) or one tower with its projection
    (`CLIPVisionModelWithProjection`, `CLIPTextModelWithProjection`); `attn_implementation` one of
    ATTN_IMPLEMENTATIONS (the weights do not depend on it).
    """
    if kind not in MODEL_CLASSES:
        raise ClipforgeError(f"unknown model kind {kind!r}; choose clip, vision or text")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ClipforgeError(f"unknown attention implementation {attn_implementation!r}; "
                             f"choose {', '.join(ATTN_IMPLEMENTATIONS)}")
    cfg = tower_config(make_config(spec), kind)
    # A private generator state: building a model must not disturb the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODEL_CLASSES[kind](cfg)
    if model.config._attn_implementation != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model.eval()
    return model
