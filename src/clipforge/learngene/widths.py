"""Widths: one block shape read at another (docs/methods.md, "Towers of different widths").

Real CLIPs' towers differ in width (ViT-B: 768 / 512; L/14: 1024 / 768), yet MM-LG's multimodal block is
one set of tensors used by both towers. Two mechanisms make that work, and a third narrows anything:

* `Narrowing(src, dst)`: a block of shape `dst` cut out of one of shape `src` by element selection
  (weight selection, Xu et al. ICLR 2024): the residual stream and the MLP channels uniformly (index
  j·D // n), the attention's channels by whole heads (uniform over heads) when the head size is kept,
  else uniformly. The same indices serve every tensor of a tower, so the selected channels stay
  connected from layer to layer. Used to narrow an ancestry to a narrower learngene and a learngene
  block to a narrower descendant.
* `TowerMap`: how a tower reads a tensor stored at the shared shape (the wider tower's). Construction
  "select": the `Narrowing` above, so the narrower tower uses a uniformly selected sub-block of the
  shared tensor and the wider tower's remaining channels are its own (unimodal) — equivalently, a
  shared block at the narrower width placed into the wider tower by element selection. Construction
  "project": the residual-stream axis through a fixed matrix P (narrow × wide, orthonormal rows) fitted
  to the ancestry (`fit_projection`: the polar factor of text_projectionᵀ · visual_projection, the map
  between the two residual streams that the contrastive heads align), the head and MLP axes selected.
  Either map is a co-isometry (C Cᵀ = I), which the least-squares fit relies on (`fit.py`).

Heads and MLP at another width (`scaled`): the head size is kept (the ViT family's rule: S, B and L all
use 64-channel heads), so heads = width / head size, and the MLP keeps its ratio to the width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ClipforgeError

# Kind of every axis of every block tensor: "model" (the residual stream), "inner" (heads × head size),
# "mlp" (the MLP's hidden channels). Keys as in `blocks.BLOCK_PARTS`.
AXES: dict[str, tuple[str, ...]] = {
    "ln1_weight": ("model",), "ln1_bias": ("model",), "ln2_weight": ("model",), "ln2_bias": ("model",),
    **{f"{p}_weight": ("inner", "model") for p in "qkv"}, **{f"{p}_bias": ("inner",) for p in "qkv"},
    "out_weight": ("model", "inner"), "out_bias": ("model",),
    "fc1_weight": ("mlp", "model"), "fc1_bias": ("mlp",), "fc2_weight": ("model", "mlp"), "fc2_bias": ("model",),
}
CONSTRUCTIONS = ("select", "project")


@dataclass(frozen=True)
class BlockShape:
    """The shape of one tower's blocks."""

    width: int
    heads: int
    mlp: int

    def __post_init__(self) -> None:
        if min(self.width, self.heads, self.mlp) < 1:
            raise ClipforgeError(f"block shape {self.describe()}: width, heads and MLP must be >= 1")
        if self.width % self.heads:
            raise ClipforgeError(f"width {self.width} does not split into {self.heads} heads")

    @property
    def head_size(self) -> int:
        return self.width // self.heads

    def size(self, axis: str) -> int:
        return self.mlp if axis == "mlp" else self.width

    def fits_in(self, other: BlockShape) -> bool:
        """No axis larger than `other`'s (the shape can be selected out of it)."""
        return self.width <= other.width and self.mlp <= other.mlp and self.heads <= other.heads

    def describe(self) -> str:
        return f"{self.width} wide, {self.heads} heads, MLP {self.mlp}"

    def to_dict(self) -> dict[str, int]:
        return {"width": self.width, "heads": self.heads, "mlp": self.mlp}


def tensor_shapes(shape: BlockShape) -> dict[str, tuple[int, ...]]:
    """The shape of every block tensor (keys of `AXES`) of a block of `shape`."""
    return {key: tuple(shape.size(axis) for axis in axes) for key, axes in AXES.items()}


def scaled(shape: BlockShape, width: int, what: str = "tower") -> BlockShape:
    """`shape` at another width: the head size kept (heads = width / head size), the MLP ratio kept."""
    if width < 1:
        raise ClipforgeError(f"{what} width must be >= 1, got {width}")
    if width % shape.head_size:
        raise ClipforgeError(f"{what} width {width} is not a multiple of the head size {shape.head_size} "
                             f"(heads keep their size: {shape.describe()})")
    return BlockShape(width, width // shape.head_size, max(1, round(width * shape.mlp / shape.width)))


def narrow_width(width: int, heads: int, fraction: float) -> int:
    """`fraction` of a tower's width in whole heads of its head size (the nearest, halves up; at least one
    head, at most all): ViT-B/32's 768 / 512 at two thirds → 512 / 320, the demo ancestry's 128 / 96 → 96 / 64."""
    if width % heads:
        raise ClipforgeError(f"width {width} does not split into {heads} heads")
    if not 0 < fraction <= 1:
        raise ClipforgeError(f"the width fraction must lie in (0, 1], got {fraction}")
    keep = min(heads, max(1, math.floor(fraction * heads + 0.5)))
    return keep * (width // heads)


def fraction_widths(clip_config: Any, fraction: float) -> dict[str, int]:
    """{"vision": w, "text": w}: `narrow_width` of each tower of a CLIP config."""
    out = {}
    for t in ("vision", "text"):
        c = getattr(clip_config, f"{t}_config")
        out[t] = narrow_width(int(c.hidden_size), int(c.num_attention_heads), fraction)
    return out


def uniform(big: int, small: int) -> Tensor:
    """Indices of `small` elements spread evenly over `big`: j·big // small (weight selection's rule)."""
    if small > big:
        raise ClipforgeError(f"cannot select {small} elements out of {big}")
    return (torch.arange(small) * big) // small


def head_indices(src: BlockShape, dst: BlockShape) -> Tensor:
    """Attention channels of `dst` in `src`: whole heads (uniform over heads) when the head size is kept."""
    if src.head_size == dst.head_size:
        heads = uniform(src.heads, dst.heads)
        return (heads[:, None] * src.head_size + torch.arange(src.head_size)).reshape(-1)
    return uniform(src.width, dst.width)


class Narrowing:
    """Select a block of shape `dst` out of a block of shape `src` (and non-block tensors along the width)."""

    def __init__(self, src: BlockShape, dst: BlockShape) -> None:
        if not dst.fits_in(src):
            raise ClipforgeError(f"cannot narrow a block of {src.describe()} to {dst.describe()}")
        self.src, self.dst = src, dst
        self.index = {"model": uniform(src.width, dst.width), "inner": head_indices(src, dst),
                      "mlp": uniform(src.mlp, dst.mlp)}
        self.identity = src == dst

    def block(self, key: str, t: Tensor, skip: str | None = None) -> Tensor:
        """Block tensor `key` cut to the `dst` shape (the axis of kind `skip` left as it is)."""
        if self.identity:
            return t
        for dim, axis in enumerate(AXES[key]):
            if axis != skip and self.src.size(axis) != self.dst.size(axis):
                t = t.index_select(dim, self.index[axis].to(t.device))
        return t

    def place(self, key: str, t: Tensor, skip: str | None = None) -> Tensor:
        """The adjoint of `block`: a `dst`-shaped tensor written into zeros of the `src` shape."""
        if self.identity:
            return t
        for dim, axis in enumerate(AXES[key]):
            if axis != skip and self.src.size(axis) != self.dst.size(axis):
                shape = list(t.shape)
                shape[dim] = self.src.size(axis)
                t = t.new_zeros(shape).index_copy(dim, self.index[axis].to(t.device), t)
        return t

    def non_block(self, name: str, t: Tensor) -> Tensor:
        """A non-block tensor (embeddings, norms, projections) cut along its width axis."""
        if self.src.width == self.dst.width or t.dim() == 0:
            return t
        dim = 0 if t.dim() == 1 or name.endswith("patch_embedding.weight") else t.dim() - 1
        return t.index_select(dim, self.index["model"].to(t.device))


def fit_projection(narrow_head: Tensor, wide_head: Tensor) -> Tensor:
    """P (narrow width × wide width, orthonormal rows) closest to narrow_headᵀ · wide_head (its polar factor).

    `narrow_head` / `wide_head`: the towers' output projections (projection_dim × width). A residual-stream
    direction x of the wide tower maps to P x in the narrow one, so that both heads see it alike.
    """
    m = narrow_head.double().T @ wide_head.double()
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return (u @ vh).float()


class TowerMap:
    """How a tower reads a tensor stored at the shared shape: C (shared → tower) and its adjoint Cᵀ."""

    def __init__(self, shared: BlockShape, tower: BlockShape, construction: str,
                 projection: Tensor | None = None) -> None:
        if construction not in CONSTRUCTIONS:
            raise ClipforgeError(f"construction {construction!r} is not one of {', '.join(CONSTRUCTIONS)}")
        self.select = Narrowing(shared, tower)
        self.projection = projection if construction == "project" else None
        if construction == "project" and projection is None:
            raise ClipforgeError("construction 'project' needs its fitted projection (build the learngene "
                                 "from the ancestry)")

    def apply(self, key: str, t: Tensor) -> Tensor:
        """C(t): the tower's view of a shared tensor."""
        if self.projection is None or "model" not in AXES[key]:
            return self.select.block(key, t)
        dim = AXES[key].index("model")  # select the head / MLP axes, then map the residual axis through P
        t = self.select.block(key, t, skip="model")
        return torch.movedim(torch.movedim(t, dim, -1) @ self.projection.T.to(t.dtype), -1, dim)

    def adjoint(self, key: str, t: Tensor) -> Tensor:
        """Cᵀ(t): a tower-shaped tensor written back at the shared shape (C Cᵀ = identity)."""
        if self.projection is None or "model" not in AXES[key]:
            return self.select.place(key, t)
        dim = AXES[key].index("model")
        t = torch.movedim(torch.movedim(t, dim, -1) @ self.projection.to(t.dtype), -1, dim)
        return self.select.place(key, t, skip="model")
