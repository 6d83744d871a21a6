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

Widths. A tensor "one for both" towers is stored at the larger tower's block shape; the narrower tower
reads it through a fixed map C (`construction`: "select" = element selection, "project" = a projection
fitted to the ancestry; `widths.TowerMap`), so for it W^m_l = a·C(first) + b·second when only `first`
is shared. Per-tower tensors have their tower's own shape.
"""

from __future__ import annotations

import json
from dataclasses import InitVar, asdict, dataclass, field, fields
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
from .widths import CONSTRUCTIONS, BlockShape, scaled

MODES = ("mmlg", "tleg_per_tower", "shared_only")
SCHEDULES = ("linear", "blend", "learned")
INITS = ("lstsq", "mean", "random")
_LEGACY_INITS = {"ancestry": "mean"}  # learngenes saved before the least-squares init
TOWERS = ("vision", "text")


# The field annotations (strings under `from __future__ import annotations`) → what JSON must hold.
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "list[float]": "a list of numbers"}


def _upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A learngene saved before towers had their own shapes held one `width`/`heads`/`mlp` for both."""
    d = dict(d)
    for part in ("width", "heads", "mlp"):
        if part in d and not any(f"{t}_{part}" in d for t in TOWERS):  # else: an unknown field, named
            value = d.pop(part)
            d.update({f"{t}_{part}": value for t in TOWERS})
    return d


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

    Each tower has its own block shape (`vision_width`/`_heads`/`_mlp`, `text_...`), as real CLIPs do.
    Tensors used by both towers are stored at the shared shape (`shared_shape`: the wider tower's) and
    read by the narrower tower through its `construction` ("select" or "project", `widths.TowerMap`).
    `aux_depth_vision` / `aux_depth_text` are the Aux-Net depths (L_v, L_t) used during extraction;
    `max_depth_*` the ancestry's depths (the deepest descendant; 0: not recorded); `init` picks how the
    tensors start (see `Learngene`): "lstsq" (fitted to the ancestry's layers, `fit.fit_to_ancestry`),
    "mean" (the mean ancestry block) or "random" (TLEG's).
    """

    # block shape per tower
    vision_width: int = 512
    vision_heads: int = 8
    vision_mlp: int = 2048
    text_width: int = 512
    text_heads: int = 8
    text_mlp: int = 2048
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
    construction: str = "select"
    max_depth_vision: int = 0
    max_depth_text: int = 0
    # both towers at once (towers of one shape): LearngeneConfig(width=32, heads=2, mlp=64)
    width: InitVar[int | None] = None
    heads: InitVar[int | None] = None
    mlp: InitVar[int | None] = None

    def __post_init__(self, width: int | None, heads: int | None, mlp: int | None) -> None:
        for part, value in (("width", width), ("heads", heads), ("mlp", mlp)):
            if value is not None:
                for tower in TOWERS:
                    setattr(self, f"{tower}_{part}", value)
        self.init = _LEGACY_INITS.get(self.init, self.init)
        for name, value, allowed in (("mode", self.mode, MODES), ("schedule", self.schedule, SCHEDULES),
                                     ("init", self.init, INITS), ("construction", self.construction, CONSTRUCTIONS)):
            if value not in allowed:
                raise ClipforgeError(f"learngene {name} {value!r} is not one of {', '.join(allowed)}")
        for name in ("vision_width", "vision_heads", "vision_mlp", "text_width", "text_heads", "text_mlp",
                     "num_stages", "aux_depth_vision", "aux_depth_text", "image_size", "patch_size", "context",
                     "projection_dim"):
            if int(getattr(self, name)) < 1:
                raise ClipforgeError(f"learngene {name} must be >= 1, got {getattr(self, name)}")
        for tower in TOWERS:
            self.tower_shape(tower)  # checks that the heads divide the width
        v, t = self.tower_shape("vision"), self.tower_shape("text")
        if not (v.fits_in(t) or t.fits_in(v)):
            raise ClipforgeError(f"the towers' block shapes cross (vision {self.tower_shape('vision').describe()}, "
                                 f"text {self.tower_shape('text').describe()}): one tower must be at least as "
                                 "large as the other in width, heads and MLP")
        if self.image_size % self.patch_size:
            raise ClipforgeError(f"image size {self.image_size} is not a multiple of patch {self.patch_size}")
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)

    def tower_shape(self, tower: str) -> BlockShape:
        """The block shape of `tower`."""
        return BlockShape(getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads"),
                          getattr(self, f"{tower}_mlp"))

    @property
    def shared_shape(self) -> BlockShape:
        """The shape tensors used by both towers are stored at: the larger tower's block shape."""
        v, t = self.tower_shape("vision"), self.tower_shape("text")
        return t if v.fits_in(t) else v

    def max_depth(self, tower: str) -> int:
        """The ancestry's depth of `tower` (0: not recorded, e.g. a learngene saved before it was)."""
        return getattr(self, f"max_depth_{tower}")

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
        d = _upgrade(d)
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
        """A config whose inputs and block shapes match an ancestry CLIP, each tower its own.

        `ancestry_config`: a `CLIPConfig`. `choices` override any field (mode, schedule, construction,
        depths); `vision_width` / `text_width` below the ancestry's give a narrower learngene, its heads
        and MLP scaled by `widths.scaled` (head size and MLP ratio kept). Aux depths default to the
        ancestry's depths, which are also recorded as the deepest descendant.
        """
        v, t = ancestry_config.vision_config, ancestry_config.text_config
        if v.hidden_act != t.hidden_act:
            raise ClipforgeError(f"the ancestry's towers use different activations ({v.hidden_act} vs "
                                 f"{t.hidden_act}); a learngene shares one")
        d: dict[str, Any] = dict(
            act=v.hidden_act, layer_norm_eps=v.layer_norm_eps, image_size=v.image_size, patch_size=v.patch_size,
            num_channels=v.num_channels, image_mean=list(getattr(v, "image_mean", CLIP_MEAN)),
            image_std=list(getattr(v, "image_std", CLIP_STD)), vocab_size=t.vocab_size,
            context=t.max_position_embeddings, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id, projection_dim=ancestry_config.projection_dim,
            logit_scale_init=float(ancestry_config.logit_scale_init_value),
            aux_depth_vision=v.num_hidden_layers, aux_depth_text=t.num_hidden_layers,
            max_depth_vision=v.num_hidden_layers, max_depth_text=t.num_hidden_layers)
        for tower, c in (("vision", v), ("text", t)):
            shape = BlockShape(c.hidden_size, c.num_attention_heads, c.intermediate_size)
            width = choices.pop(f"{tower}_width", None)
            if width is not None and width != shape.width:
                if width > shape.width:
                    raise ClipforgeError(f"learngene {tower} width {width} is wider than the ancestry's "
                                         f"{tower} tower ({shape.width})")
                shape = scaled(shape, width, f"learngene {tower}")
            d.update({f"{tower}_{k}": val for k, val in shape.to_dict().items()})
        d.update(choices)
        return cls(**d)

    def clip_config_dict(self, depth_vision: int, depth_text: int,
                         shapes: dict[str, BlockShape] | None = None) -> dict[str, Any]:
        """A registry-style dict for a CLIP of the given tower depths (block shapes: the towers' own, or `shapes`)."""
        shapes = {t: (shapes or {}).get(t) or self.tower_shape(t) for t in TOWERS}
        block = {t: dict(hidden_size=s.width, intermediate_size=s.mlp, num_attention_heads=s.heads,
                         hidden_act=self.act, layer_norm_eps=self.layer_norm_eps) for t, s in shapes.items()}
        return {
            "name": f"learngene-v{depth_vision}-t{depth_text}",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "vision_config": dict(block["vision"], num_hidden_layers=depth_vision, image_size=self.image_size,
                                  patch_size=self.patch_size, num_channels=self.num_channels,
                                  image_mean=list(self.image_mean), image_std=list(self.image_std)),
            "text_config": dict(block["text"], num_hidden_layers=depth_text, vocab_size=self.vocab_size,
                                max_position_embeddings=self.context, bos_token_id=self.bos_token_id,
                                eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id),
        }

    def clip_config(self, depth_vision: int | None = None, depth_text: int | None = None,
                    shapes: dict[str, BlockShape] | None = None):
        """The `CLIPConfig` of a CLIP with these blocks (depths default to the Aux-Net's)."""
        from ..models.registry import make_config

        dv = self.aux_depth_vision if depth_vision is None else depth_vision
        dt = self.aux_depth_text if depth_text is None else depth_text
        if dv < 1 or dt < 1:
            raise ClipforgeError(f"tower depths must be >= 1, got vision {dv}, text {dt}")
        return make_config(self.clip_config_dict(dv, dt, shapes))
