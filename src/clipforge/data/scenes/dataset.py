"""Procedural captioned scenes: small coloured shapes on a grey background, with true captions.

The data is built to be hard for contrastive CLIPs in the ways they stay weak at convergence:
attribute binding across objects, spatial relations between objects, and counting.

Objects: 7 shapes (circle, square, triangle, star, cross, diamond, heart), 10 colours, 2 sizes
(about 10 and 16 px at 40 px), 4 fills (solid, striped, dotted, outline) and, for triangle, heart
and cross, 2 orientations (upright / upside-down or tilted). Scenes are drawn at 4x and
box-downsampled, then light noise is added (`render`); captions come from `text`.

Scene mix (train and test alike):
  * 25% "single":   one object, placed left / right / top / bottom / centre, position named;
  * 25% "relation": two objects, one left of / right of / above / below the other;
  * 20% "binding":  two (70%) or three different objects, all shapes and colours distinct;
  * 30% "count":    one to three groups of 1-4 identical objects ("three red stars and a heart").

Caption styles (`caption_style`, see `styles`): "full" (the default, described above: colour,
shape, count and relation always named), "alt" (short web alt-text: one object group, no counts or
relations) and "dense" (every object with every attribute, counts, binding and relations).
`full_share` and `dense_share` mix in "full" and "dense" captions: a seeded draw per item (its own stream)
gives those shares of items "full" / "dense" captions and the rest `caption_style` (real alt-text names
counts and places now and then, and a few web captions are long descriptions).

Held-out rule: a fixed set `HELD_OUT` of 11 of the 70 (shape, colour) combinations (16%; drawn
once with `HOLDOUT_SEED`, the same for every dataset seed; each shape and colour is in at most two
of them) never occurs in a train scene, in any role. Every test scene contains at least one
held-out combination, in a random object slot; its other objects may use any combination.

Item i of a dataset depends only on (seed, split, i): its spec, image and captions come from
`np.random.default_rng([seed, split_id, i, stream])`, so reading order (and DataLoader workers) do
not matter.

`diagnostic_pairs` gives MMVP-style pairs: two images that differ in one thing, with the two
captions (same template and word choices) that tell them apart. Pairs are built on test scenes
(image_a always holds a held-out combination). Single-attribute pairs (colour, shape, size, fill,
position, orientation) use one-object scenes; "count" changes one group's count by one;
"binding" swaps the colours of two objects; "relation" swaps two objects' places.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ClipforgeError
from ..base import ImageTextDataset, Sample
from .render import render
from .spec import (
    COLOURS,
    FILLS,
    HELD_OUT,
    HOLDOUT_SEED,
    ORIENTED_SHAPES,
    POSITIONS,
    SHAPES,
    SPLIT_IDS,
    Draws,
    SceneObject,
    SceneSpec,
    packed_scene,
    pick_combos,
    place_pair,
    place_single,
    sample_relation,
    sample_scene,
    sample_single,
    with_object,
)
from .styles import CAPTION_STYLES, caption_styled, check_share, check_style
from .text import caption

__all__ = ["CAPTION_STYLES", "COLOURS", "HELD_OUT", "HOLDOUT_SEED", "PAIR_TYPES", "SHAPES", "DiagnosticPair",
           "SceneObject", "SceneSpec", "ScenesDataset", "caption", "caption_styled", "diagnostic_pairs", "render",
           "sample_scene", "save_grid", "save_pairs_grid"]

PAIR_TYPES = ("colour", "shape", "size", "fill", "position", "orientation", "count", "binding", "relation")
# Streams of one item's generator: 0 scene, 1 image, 2 captions, 3 the caption style (with `full_share`).
_SCENE, _IMAGE, _TEXT, _STYLE = 0, 1, 2, 3


class ScenesDataset(ImageTextDataset):
    """`size` procedural scenes of one split; item i is a `Sample` with `meta["spec"]` (a dict).

    `caption_style` is one of CAPTION_STYLES ("full", the default, "alt" or "dense"); `full_share` and
    `dense_share` (0 to 1, their sum at most 1) are the chances that an item's captions are "full" /
    "dense" instead (one draw per item, `style_at`).
    """

    name = "scenes"

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0, image_size: int = 40,
                 captions_per_image: int = 1, caption_style: str = "full", full_share: float = 0.0,
                 dense_share: float = 0.0) -> None:
        if split not in ("train", "test"):
            raise ClipforgeError(f"scenes split must be 'train' or 'test', got {split!r}")
        if size < 0 or image_size < 8 or captions_per_image < 1:
            raise ClipforgeError(f"scenes: need size >= 0, image_size >= 8, captions_per_image >= 1 "
                                 f"(got {size}, {image_size}, {captions_per_image})")
        self.split, self.size, self.seed = split, size, seed
        self.image_size, self.captions_per_image = image_size, captions_per_image
        self.caption_style = check_style(caption_style, "scenes caption_style")
        self.full_share = check_share(full_share, "scenes full_share")
        self.dense_share = check_share(dense_share, "scenes dense_share")
        if self.full_share + self.dense_share > 1:
            raise ClipforgeError(f"scenes full_share + dense_share must be at most 1, got {full_share} + {dense_share}")

    def __len__(self) -> int:
        return self.size

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        if not 0 <= i < self.size:
            raise IndexError(f"scene index {i} out of range for a dataset of {self.size}")
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], i, stream])

    def spec_at(self, i: int) -> SceneSpec:
        """The scene of item i, without drawing it."""
        return sample_scene(self._rng(i, _SCENE), self.split)

    def style_at(self, i: int) -> str:
        """The caption style of item i: "full" / "dense" for seeded `full_share` / `dense_share` of the items, else
        `caption_style` (one uniform draw u: full below full_share, dense below full_share + dense_share)."""
        if self.full_share == 0 and self.dense_share == 0:
            return self.caption_style
        u = self._rng(i, _STYLE).random()
        if u < self.full_share:
            return "full"
        return "dense" if u < self.full_share + self.dense_share else self.caption_style

    def captions_at(self, i: int, spec: SceneSpec | None = None) -> list[str]:
        """The captions of item i, without drawing the image (distinct when the draws allow)."""
        spec = spec or self.spec_at(i)
        style = self.style_at(i)
        d, out = Draws(self._rng(i, _TEXT)), []
        for _ in range(4 * self.captions_per_image):
            text = caption_styled(spec, d, style)
            if text not in out:
                out.append(text)
            if len(out) == self.captions_per_image:
                break
        # Few distinct wordings exist for some scenes: repeat rather than return fewer captions.
        return out + [out[k % len(out)] for k in range(self.captions_per_image - len(out))]

    def __getitem__(self, i: int) -> Sample:
        spec = self.spec_at(i)
        image = render(spec, self.image_size, self._rng(i, _IMAGE))
        meta = {"spec": spec.to_dict(), "index": i, "split": self.split}
        return Sample(image, self.captions_at(i, spec), None, meta)


@dataclass
class DiagnosticPair:
    """Two images differing in one thing; a model passes if it matches a<->caption_a and b<->caption_b."""

    image_a: Image.Image
    image_b: Image.Image
    caption_a: str
    caption_b: str
    pair_type: str
    spec_a: dict[str, Any] = field(default_factory=dict)
    spec_b: dict[str, Any] = field(default_factory=dict)


def _other(d: Draws, values: tuple[str, ...], current: str) -> str:
    return d.pick(tuple(v for v in values if v != current))


def _single_pair(d: Draws, pair_type: str) -> tuple[SceneSpec, SceneSpec, set[str]]:
    spec = sample_single(d, "test")
    while pair_type == "orientation" and spec.objects[0].shape not in ORIENTED_SHAPES:
        spec = sample_single(d, "test")
    obj = spec.objects[0]
    # Centre the pair where a large object fits too, so a size change moves nothing else.
    centre = place_single(d, "large", spec.position or "centre")
    a = with_object(spec, 0, centres=(centre,))
    if pair_type == "colour":
        return a, with_object(a, 0, colour=_other(d, COLOURS, obj.colour)), set()
    if pair_type == "shape":
        # Keep the orientation meaningful on both sides: rotated shapes only swap among themselves.
        pool = tuple(ORIENTED_SHAPES) if obj.orientation == "rotated" else SHAPES
        return a, with_object(a, 0, shape=_other(d, tuple(sorted(pool)), obj.shape)), set()
    if pair_type == "size":
        return a, with_object(a, 0, size="large" if obj.size == "small" else "small"), {"size"}
    if pair_type == "fill":
        return a, with_object(a, 0, fill=_other(d, FILLS, obj.fill)), {"fill"}
    if pair_type == "orientation":
        flipped = "upright" if obj.orientation == "rotated" else "rotated"
        return a, with_object(a, 0, orientation=flipped), {"orientation"}
    # position
    pos = _other(d, POSITIONS, spec.position or "centre")
    b = replace(with_object(a, 0, centres=(place_single(d, "large", pos),)), position=pos)
    return a, b, {"position"}


def _count_pair(d: Draws) -> tuple[SceneSpec, SceneSpec]:
    n = 1 if d.chance(0.5) else 2
    hi = d.pick((2, 3, 4))
    counts = [hi] + [d.pick((1, 2))] * (n - 1)
    big = packed_scene(d, "count", pick_combos(d, n, "test", "combo"), counts)
    small = with_object(big, 0, centres=big.objects[0].centres[:-1])
    return (big, small) if d.chance(0.5) else (small, big)


def _binding_pair(d: Draws) -> tuple[SceneSpec, SceneSpec]:
    a = packed_scene(d, "binding", pick_combos(d, 2, "test", "both"), [1, 1])
    c0, c1 = a.objects[0].colour, a.objects[1].colour
    return a, with_object(with_object(a, 0, colour=c1), 1, colour=c0)


def _relation_pair(d: Draws) -> tuple[SceneSpec, SceneSpec]:
    a = sample_relation(d, "test")
    rel = a.relation[2] if a.relation else "left"
    # Place for the larger size so swapping the two objects keeps both inside and apart.
    size = "large" if any(o.size == "large" for o in a.objects) else "small"
    p, q = place_pair(d, size, size, rel)
    a = with_object(with_object(a, 0, centres=(p,)), 1, centres=(q,))
    b = with_object(with_object(a, 0, centres=(q,)), 1, centres=(p,))
    return a, replace(b, relation=(1, 0, rel))


def diagnostic_pairs(pair_type: str, n: int = 200, seed: int = 0, image_size: int = 40) -> list[DiagnosticPair]:
    """`n` pairs of `pair_type` (one of PAIR_TYPES), deterministic in `seed`."""
    if pair_type not in PAIR_TYPES:
        raise ClipforgeError(f"unknown pair type {pair_type!r}; choose from {', '.join(PAIR_TYPES)}")
    type_id = PAIR_TYPES.index(pair_type)
    out = []
    for k in range(n):
        key = [seed, SPLIT_IDS["pairs"], type_id, k]
        d = Draws(np.random.default_rng(key + [_SCENE]))
        mention: set[str] = set()
        if pair_type == "count":
            a, b = _count_pair(d)
        elif pair_type == "binding":
            a, b = _binding_pair(d)
        elif pair_type == "relation":
            a, b = _relation_pair(d)
        else:
            a, b, mention = _single_pair(d, pair_type)
        # Same generators on both sides: same background, noise, template and word choices.
        images = [render(s, image_size, np.random.default_rng(key + [_IMAGE])) for s in (a, b)]
        texts = [caption(s, np.random.default_rng(key + [_TEXT]), mention) for s in (a, b)]
        out.append(DiagnosticPair(images[0], images[1], texts[0], texts[1], pair_type, a.to_dict(), b.to_dict()))
    return out


def _show(ax: Any, image: Image.Image, text: str, width: int = 26) -> None:
    ax.imshow(np.asarray(image), interpolation="nearest")
    ax.set_title(textwrap.fill(text, width), fontsize=7)
    ax.axis("off")


def save_grid(path: str, n: int = 16, seed: int = 0, split: str = "train", image_size: int = 40,
              caption_style: str = "full") -> None:
    """A PNG of `n` samples (upscaled, nearest neighbour) titled with their captions (in `caption_style`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds, cols = ScenesDataset(split, size=n, seed=seed, image_size=image_size, caption_style=caption_style), 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            s = ds[k]
            _show(ax, s.image, f"[{s.meta['spec']['kind']}] {s.captions[0]}")
        else:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_pairs_grid(path: str, seed: int = 0, image_size: int = 40) -> None:
    """A PNG with one pair per pair type: both images and both captions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3  # pairs per row, two axes each
    rows = -(-len(PAIR_TYPES) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, t in enumerate(PAIR_TYPES):
        p = diagnostic_pairs(t, n=1, seed=seed, image_size=image_size)[0]
        r, c = divmod(k, cols)
        _show(axes[r, 2 * c], p.image_a, f"{t} A: {p.caption_a}", 24)
        _show(axes[r, 2 * c + 1], p.image_b, f"{t} B: {p.caption_b}", 24)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def count_captions(split: str, size: int, seed: int, max_count: int = 5) -> tuple[list[str], list[int]]:
    """(first caption, object count − 1, capped at `max_count`) of `size` scenes, without rendering images.

    A text task for text towers: the count needs number words, plurals and lists read together
    ("three red stars and a heart" → 4), which no single token gives away.
    """
    ds = ScenesDataset(split=split, size=size, seed=seed)
    texts, labels = [], []
    for i in range(size):
        spec = ds.spec_at(i)
        texts.append(ds.captions_at(i, spec)[0])
        labels.append(min(sum(o.count for o in spec.objects), max_count) - 1)
    return texts, labels
