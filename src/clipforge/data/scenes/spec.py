"""Scene descriptions for the procedural scenes data: attributes, `SceneSpec` and scene sampling.

A scene is a tuple of object groups (identical copies of one object: shape, colour, size, fill,
orientation) plus, for one-object scenes, a position word and, for two-object scenes, a relation.
Object centres are chosen here, at sampling time, so rendering and captioning are pure functions
of the spec. See `clipforge.data.scenes` for the scene mix and the held-out rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "heart")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
SIZES = ("small", "large")
FILLS = ("solid", "striped", "dotted", "outline")
ORIENTATIONS = ("upright", "rotated")
# Only these shapes look different when rotated ("rotated" = upside-down triangle or heart,
# a cross tilted into an x). A rotated square would be a diamond, so squares stay upright.
ORIENTED_SHAPES = frozenset({"triangle", "heart", "cross"})
POSITIONS = ("left", "right", "top", "bottom", "centre")
RELATIONS = ("left", "right", "above", "below")
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
KINDS = ("single", "relation", "binding", "count")
KIND_WEIGHTS = (0.25, 0.25, 0.2, 0.3)

# Nominal diameters as fractions of the image side (about 10 and 16 px at 40 px).
DIAMETER = {"small": 0.26, "large": 0.40}
# Extra room around each object when packing, as a fraction of the side (about 1 px).
GAP = 0.03
MAX_OBJECTS = 5
POSITION_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25),
                    "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}
# Fixed, so that every dataset seed shares one train/test split of combinations.
HOLDOUT_SEED = 20240617
SPLIT_IDS = {"train": 0, "test": 1, "pairs": 2}


def _held_out(seed: int) -> frozenset[tuple[str, str]]:
    # 11 of the 70 (shape, colour) pairs (16%). Walking a shuffled colour list against a shuffled
    # shape list gives every shape and every colour at most two held-out partners, so each of
    # them is still seen in train with most partners.
    rng = np.random.default_rng(seed)
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))]
    return frozenset((shapes[j % len(shapes)], colours[j % len(colours)]) for j in range(11))


HELD_OUT: frozenset[tuple[str, str]] = _held_out(HOLDOUT_SEED)
ALL_COMBOS = tuple((s, c) for s in SHAPES for c in COLOURS)
TRAIN_COMBOS = tuple(sc for sc in ALL_COMBOS if sc not in HELD_OUT)
HELD_OUT_SORTED = tuple(sorted(HELD_OUT))


@dataclass(frozen=True)
class SceneObject:
    """A group of `count` identical objects; `centres` holds one (x, y) in [0, 1] per copy."""

    shape: str
    colour: str
    size: str = "small"
    fill: str = "solid"
    orientation: str = "upright"
    centres: tuple[tuple[float, float], ...] = ((0.5, 0.5),)

    @property
    def count(self) -> int:
        return len(self.centres)

    @property
    def combo(self) -> tuple[str, str]:
        return (self.shape, self.colour)


@dataclass(frozen=True)
class SceneSpec:
    """Objects plus `position` (one-object scenes) or `relation` (i, j, rel): objects[i] is rel of objects[j]."""

    kind: str
    objects: tuple[SceneObject, ...]
    position: str | None = None
    relation: tuple[int, int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "position": self.position,
                "relation": list(self.relation) if self.relation else None,
                "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "fill": o.fill,
                             "orientation": o.orientation, "count": o.count,
                             "centres": [list(c) for c in o.centres]} for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        objs = tuple(SceneObject(o["shape"], o["colour"], o["size"], o["fill"], o["orientation"],
                                 tuple((float(x), float(y)) for x, y in o["centres"]))
                     for o in d["objects"])
        rel = tuple(d["relation"]) if d.get("relation") else None
        return cls(d["kind"], objs, d.get("position"), rel)  # type: ignore[arg-type]


class Draws:
    """Uniform floats from a numpy Generator, drawn in blocks: cheap scalar draws, same sequence."""

    def __init__(self, rng: np.random.Generator, block: int = 64) -> None:
        self.rng, self.block, self.buf, self.i = rng, block, [], 0

    def u(self) -> float:
        if self.i >= len(self.buf):
            self.buf, self.i = self.rng.random(self.block).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.u()

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[min(int(self.u() * len(seq)), len(seq) - 1)]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def weighted(self, seq: Sequence[Any], weights: Sequence[float]) -> Any:
        x, acc = self.u() * sum(weights), 0.0
        for item, w in zip(seq, weights):
            acc += w
            if x < acc:
                return item
        return seq[-1]


def _radius(size: str, shape: str = "square") -> float:
    # Packing radius: squares reach 0.57 d from the centre at their corners, other shapes 0.5 d.
    return (0.57 if shape == "square" else 0.5) * DIAMETER[size]


def _clash(a: tuple[str, str], b: tuple[str, str], distinct: str) -> bool:
    return a == b or (distinct == "both" and (a[0] == b[0] or a[1] == b[1]))


def pick_combos(d: Draws, n: int, split: str, distinct: str) -> list[tuple[str, str]]:
    """n (shape, colour) pairs, pairwise distinct; `distinct` = "combo" or "both" (shapes and colours)."""
    pool = TRAIN_COMBOS if split == "train" else ALL_COMBOS
    # A test scene always carries one held-out combination, in a random slot.
    out = [d.pick(HELD_OUT_SORTED)] if split == "test" else []
    while len(out) < n:
        sc = d.pick(pool)
        if not any(_clash(sc, o, distinct) for o in out):
            out.append(sc)
    if split == "test":
        out.insert(int(d.u() * n), out.pop(0))
    return out


def _attrs(d: Draws, shape: str) -> tuple[str, str, str]:
    size, fill = d.pick(SIZES), d.pick(FILLS)
    orient = d.pick(ORIENTATIONS)
    return size, fill, orient if shape in ORIENTED_SHAPES else "upright"


def _pack(d: Draws, radii: list[float], tries: int = 12, cands: int = 32) -> list[tuple[float, float]] | None:
    """Random non-overlapping centres for discs of the given radii, or None if none were found."""
    order = sorted(range(len(radii)), key=lambda k: -radii[k])  # big ones first: far fewer dead ends
    rad = np.asarray(radii)
    for _ in range(tries):
        xy = np.zeros((len(radii), 2))
        done: list[int] = []
        for k in order:
            # A batch of candidates per object, tested at once: the first that fits is kept.
            c = d.rng.random((cands, 2)) * (0.98 - 2 * rad[k]) + (rad[k] + 0.01)
            if done:
                d2 = ((c[:, None, :] - xy[done][None]) ** 2).sum(-1)
                ok = np.flatnonzero((d2 >= (rad[k] + rad[done] + GAP) ** 2).all(1))
                if ok.size == 0:
                    break
                c = c[ok]
            xy[k] = c[0]
            done.append(k)
        if len(done) == len(radii):
            return [(round(float(x), 4), round(float(y), 4)) for x, y in xy]
    return None


def place_single(d: Draws, size: str, position: str) -> tuple[float, float]:
    """A centre near the named position, jittered but kept inside the image."""
    r, (cx, cy) = _radius(size), POSITION_CENTRES[position]
    x = min(max(cx + d.uniform(-0.05, 0.05), r + 0.01), 0.99 - r)
    y = min(max(cy + d.uniform(-0.05, 0.05), r + 0.01), 0.99 - r)
    return (round(x, 4), round(y, 4))


def place_pair(d: Draws, size_a: str, size_b: str, rel: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres for a and b with `a rel b` clear: the separation along the relation's axis dominates."""
    ra, rb = _radius(size_a), _radius(size_b)  # square bound: safe for any shape
    first, second = (ra, rb) if rel in ("left", "above") else (rb, ra)
    lo, hi = max(first + second + GAP, 0.35), (0.99 - second) - (first + 0.01)
    gap = d.uniform(lo, max(lo, hi))
    p1 = d.uniform(first + 0.01, max(first + 0.01, 0.99 - second - gap))
    p2 = p1 + gap
    q1, q2 = 0.5 + d.uniform(-0.12, 0.12), 0.5 + d.uniform(-0.12, 0.12)
    q1 = min(max(q1, first + 0.01), 0.99 - first)
    q2 = min(max(q2, second + 0.01), 0.99 - second)
    c1, c2 = ((p1, q1), (p2, q2)) if rel in ("left", "right") else ((q1, p1), (q2, p2))
    c1, c2 = (round(c1[0], 4), round(c1[1], 4)), (round(c2[0], 4), round(c2[1], 4))
    return (c1, c2) if rel in ("left", "above") else (c2, c1)


def sample_single(d: Draws, split: str) -> SceneSpec:
    (sc,) = pick_combos(d, 1, split, "combo")
    size, fill, orient = _attrs(d, sc[0])
    pos = d.pick(POSITIONS)
    obj = SceneObject(sc[0], sc[1], size, fill, orient, (place_single(d, size, pos),))
    return SceneSpec("single", (obj,), position=pos)


def sample_relation(d: Draws, split: str) -> SceneSpec:
    combos = pick_combos(d, 2, split, "combo")
    rel = d.pick(RELATIONS)
    a, b = [(*sc, *_attrs(d, sc[0])) for sc in combos]
    ca, cb = place_pair(d, a[2], b[2], rel)
    objs = (SceneObject(*a, (ca,)), SceneObject(*b, (cb,)))
    return SceneSpec("relation", objs, relation=(0, 1, rel))


def packed_scene(d: Draws, kind: str, combos: list[tuple[str, str]], counts: list[int]) -> SceneSpec:
    attrs = [list(_attrs(d, sc[0])) for sc in combos]
    counts = list(counts)
    while True:
        radii = [_radius(a[0], sc[0]) for sc, a, n in zip(combos, attrs, counts) for _ in range(n)]
        centres = _pack(d, radii)
        if centres is not None:
            break
        # Too crowded: shrink a large group, else drop one copy from the biggest group.
        big = [i for i, a in enumerate(attrs) if a[0] == "large"]
        if big:
            attrs[big[0]][0] = "small"
        else:
            counts[counts.index(max(counts))] -= 1
    objs, k = [], 0
    for sc, a, n in zip(combos, attrs, counts):
        objs.append(SceneObject(sc[0], sc[1], a[0], a[1], a[2], tuple(centres[k:k + n])))
        k += n
    return SceneSpec(kind, tuple(objs))


def sample_binding(d: Draws, split: str) -> SceneSpec:
    n = 2 if d.chance(0.7) else 3
    return packed_scene(d, "binding", pick_combos(d, n, split, "both"), [1] * n)


def sample_count(d: Draws, split: str) -> SceneSpec:
    n = d.weighted((1, 2, 3), (0.5, 0.35, 0.15))
    # At most MAX_OBJECTS copies in all, so they fit side by side at 40 px.
    counts = [d.pick((2, 3, 4))]
    for _ in range(n - 1):
        counts.append(max(1, min(d.pick((1, 2, 3)), MAX_OBJECTS - sum(counts) - (n - len(counts) - 1))))
    return packed_scene(d, "count", pick_combos(d, n, split, "combo"), counts)


SAMPLERS = {"single": sample_single, "relation": sample_relation, "binding": sample_binding,
            "count": sample_count}


def sample_scene(rng: np.random.Generator, split: str = "train", kind: str | None = None) -> SceneSpec:
    """A random scene; `split="train"` avoids HELD_OUT combinations, "test" includes at least one."""
    d = Draws(rng)
    kind = kind or d.weighted(KINDS, KIND_WEIGHTS)
    return SAMPLERS[kind](d, split)


def with_object(spec: SceneSpec, i: int, **changes: Any) -> SceneSpec:
    """A copy of `spec` with fields of objects[i] replaced."""
    objs = list(spec.objects)
    objs[i] = replace(objs[i], **changes)
    return replace(spec, objects=tuple(objs))
