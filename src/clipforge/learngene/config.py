"""`LearngeneConfig`: every choice of clipforge's MM-LG reconstruction, as one JSON-serialisable record.

clipforge's MM-LG is a *reconstruction*: the paper (Chen et al., arXiv 2506.16673) is available only as
its abstract and no code is public. The abstract fixes "multimodal and unimodal blocks combined in a
weighted sum"; everything else follows the group's earlier TLEG / SWS code and is a field here, so a
user holding the paper can match it (docs/methods.md Part B).

Weighted sums. For every block sub-module k (layer norms, q/k/v/out projections, fc1, fc2), layer
l = 0..L-1 of tower m ∈ {vision, text} with depth L uses W^m_l[k] = a^m(l, L)·first + b^m(l, L)·second:

    mode             first (weight a)             second (weight b)
    "mmlg"           θ_MM[k]   (one for both)     θ_U^m[k]   (one per tower)
    "tleg_per_tower" θ_A^m[k]  (one per tower)    θ_B^m[k]   (one per tower)   no shared tensor
    "shared_only"    θ_MM[k]   (one for both)     θ_S[k]     (one for both)    no unimodal tensor

`tleg_per_tower` is TLEG applied to each tower separately (MM-LG without the multimodal block);
`shared_only` is MM-LG without the unimodal blocks (both towers run the same TLEG-style pair).

Schedules (a, b) at layer l of L:
    "linear"  a = 1,           b = l/L             (TLEG's θ_A + (l/L)·θ_B)
    "blend"   a = 1 - l/(L-1), b = l/(L-1)         (L = 1: a = 1, b = 0)
    "learned" one trained (a, b) pair per layer and tower at the Aux-Net depth, initialised to the
              linear schedule; another depth interpolates them over l/L (see `Learngene.coefficients`).

Stages (SWS-style, `num_stages` = S): each stage holds its own tensors; layer l of an L-layer tower
belongs to stage floor(l·S/L) (contiguous, sizes differing by at most one, e.g. S=5, L=16 gives
[4,3,3,3,3]; when L < S some stages go unused). Coefficients still use the global position l/L.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ClipforgeError
from ..models.registry import (
    BOS_TOKEN_ID,
    CLIP_MEAN,
    CLIP_STD,
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    VOCAB_SIZE,
)

MODES = ("mmlg", "tleg_per_tower", "shared_only")
SCHEDULES = ("linear", "blend", "learned")
INITS = ("lstsq", "mean", "random")
_LEGACY_INITS = {"ancestry": "mean"}  # learngenes saved before the least-squares init
TOWERS = ("vision", "text")


# The field annotations (strings under `from __future__ import annotations`) → what JSON must hold.
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "list[float]": "a list of numbers"}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)  # JSON true is not a width


def _has_type(value: Any, annotation: str) -> bool:
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return _is_number(value)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "list[float]":
        return isinstance(value, list) and all(_is_number(v) for v in value)
    return True  # a field type added later and not listed here: left to the dataclass


@dataclass
class LearngeneConfig:
    """Shape of the learngene's blocks and of the descendants' inputs, plus the MM-LG choices.

    Both towers share one block shape (`width`, `heads`, `mlp`, `act`): a block used by both towers
    needs equal widths. `aux_depth_vision` / `aux_depth_text` are the Aux-Net depths (L_v, L_t) used
    during extraction; `init` picks how the tensors start (see `Learngene`): "lstsq" (fitted to the
    ancestry's layers, `fit.fit_to_ancestry`), "mean" (the mean ancestry block) or "random" (TLEG's).
    """

    # block shape, both towers
    width: int = 512
    heads: int = 8
    mlp: int = 2048
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # vision input
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    # text input
    vocab_size: int = VOCAB_SIZE
    context: int = 77
    bos_token_id: int = BOS_TOKEN_ID
    eos_token_id: int = EOS_TOKEN_ID
    pad_token_id: int = PAD_TOKEN_ID
    # heads of the model
    projection_dim: int = 512
    logit_scale_init: float = 2.6592
    # MM-LG choices
    mode: str = "mmlg"
    schedule: str = "linear"
    num_stages: int = 1
    aux_depth_vision: int = 6
    aux_depth_text: int = 6
    init: str = "random"

    def __post_init__(self) -> None:
        self.init = _LEGACY_INITS.get(self.init, self.init)
        for name, value, allowed in (("mode", self.mode, MODES), ("schedule", self.schedule, SCHEDULES),
                                     ("init", self.init, INITS)):
            if value not in allowed:
                raise ClipforgeError(f"learngene {name} {value!r} is not one of {', '.join(allowed)}")
        for name in ("width", "heads", "mlp", "num_stages", "aux_depth_vision", "aux_depth_text",
                     "image_size", "patch_size", "context", "projection_dim"):
            if int(getattr(self, name)) < 1:
                raise ClipforgeError(f"learngene {name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ClipforgeError(f"width {self.width} does not split into {self.heads} heads")
        if self.image_size % self.patch_size:
            raise ClipforgeError(f"image size {self.image_size} is not a multiple of patch {self.patch_size}")
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)

    def aux_depth(self, tower: str) -> int:
        """The Aux-Net depth of `tower`."""
        return self.aux_depth_vision if tower == "vision" else self.aux_depth_text

    def stage(self, layer: int, depth: int) -> int:
        """The stage of layer `layer` (0-based) in a tower of `depth` layers: floor(layer·S/depth)."""
        return (layer * self.num_stages) // depth

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearngeneConfig:
        """A config from its JSON form; a field of the wrong type is named (a file may be hand-edited)."""
        if not isinstance(d, dict):
            raise ClipforgeError(f"learngene config must be a JSON object, got {type(d).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ClipforgeError(f"unknown learngene config fields: {', '.join(unknown)}")
        for name, value in d.items():
            if not _has_type(value, types[name]):
                shown = json.dumps(value, default=str)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise ClipforgeError(f"learngene config field {name!r} must be {_TYPE_WORDS[types[name]]}, "
                                     f"got {shown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # --- bridges to Hugging Face configs -------------------------------------------------------

    @classmethod
    def from_ancestry(cls, ancestry_config: Any, **choices: Any) -> LearngeneConfig:
        """A config whose inputs (and, when both towers agree, block shape) match an ancestry CLIP.

        `ancestry_config`: a `CLIPConfig`. `choices` override any field (mode, schedule, depths, or
        the block shape when the ancestry's towers differ in width). Aux depths default to the
        ancestry's depths.
        """
        v, t = ancestry_config.vision_config, ancestry_config.text_config
        d: dict[str, Any] = dict(
            layer_norm_eps=v.layer_norm_eps, image_size=v.image_size, patch_size=v.patch_size,
            num_channels=v.num_channels, image_mean=list(getattr(v, "image_mean", CLIP_MEAN)),
            image_std=list(getattr(v, "image_std", CLIP_STD)), vocab_size=t.vocab_size,
            context=t.max_position_embeddings, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id, projection_dim=ancestry_config.projection_dim,
            logit_scale_init=float(ancestry_config.logit_scale_init_value),
            aux_depth_vision=v.num_hidden_layers, aux_depth_text=t.num_hidden_layers)
        shape = {"width": "hidden_size", "heads": "num_attention_heads", "mlp": "intermediate_size",
                 "act": "hidden_act"}
        for ours, hf in shape.items():
            if ours in choices:
                continue
            if getattr(v, hf) != getattr(t, hf):
                raise ClipforgeError(f"the ancestry's towers differ in {hf} ({getattr(v, hf)} vs {getattr(t, hf)}):"
                                     f" give the learngene's {ours} explicitly")
            d[ours] = getattr(v, hf)
        d.update(choices)
        return cls(**d)

    def clip_config_dict(self, depth_vision: int, depth_text: int) -> dict[str, Any]:
        """A registry-style dict for a CLIP with this block shape and the given tower depths."""
        block = dict(hidden_size=self.width, intermediate_size=self.mlp, num_attention_heads=self.heads,
                     hidden_act=self.act, layer_norm_eps=self.layer_norm_eps)
        return {
            "name": f"learngene-v{depth_vision}-t{depth_text}",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "vision_config": dict(block, num_hidden_layers=depth_vision, image_size=self.image_size,
                                  patch_size=self.patch_size, num_channels=self.num_channels,
                                  image_mean=list(self.image_mean), image_std=list(self.image_std)),
            "text_config": dict(block, num_hidden_layers=depth_text, vocab_size=self.vocab_size,
                                max_position_embeddings=self.context, bos_token_id=self.bos_token_id,
                                eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id),
        }

    def clip_config(self, depth_vision: int | None = None, depth_text: int | None = None):
        """The `CLIPConfig` of a CLIP with these blocks (depths default to the Aux-Net's)."""
        from ..models.registry import make_config

        dv = self.aux_depth_vision if depth_vision is None else depth_vision
        dt = self.aux_depth_text if depth_text is None else depth_text
        if dv < 1 or dt < 1:
            raise ClipforgeError(f"tower depths must be >= 1, got vision {dv}, text {dt}")
        return make_config(self.clip_config_dict(dv, dt))
