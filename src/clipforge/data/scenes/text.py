"""Captions for `SceneSpec`s: varied wording and word order, always true of the image.

Colour, shape, count and (for two-object scenes) the relation are always named; size, fill,
orientation and a one-object scene's position may be left out for variety. Every random choice
draws a fixed number of uniforms whatever the attribute values, so two specs captioned with
equally seeded generators get the same template and word choices (diagnostic pairs rely on it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from .spec import INVERSE_RELATION, ORIENTED_SHAPES, Draws, SceneObject, SceneSpec

MAX_WORDS = 20  # leaves room under 32 BPE tokens (start/end + a few multi-token words)
OPTIONAL = ("size", "fill", "orientation", "position")

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
FILL_ADJ = {"solid": ("solid", "filled"), "striped": ("striped",), "dotted": ("dotted", "spotted"),
            "outline": ("outlined", "hollow")}
FILL_POST = {"solid": ("in solid colour",), "striped": ("with stripes",),
             "dotted": ("with dots", "with spots"), "outline": ("drawn in outline", "in outline")}
ORIENT_WORDS = {"upright": ("upright",), "rotated": ("upside-down",)}
CROSS_ORIENT_WORDS = {"upright": ("upright",), "rotated": ("tilted", "diagonal")}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
POSITION_WORDS = {"left": ("on the left", "at the left", "on the left side"),
                  "right": ("on the right", "at the right", "on the right side"),
                  "top": ("at the top", "near the top", "in the upper half"),
                  "bottom": ("at the bottom", "near the bottom", "in the lower half"),
                  "centre": ("in the centre", "in the middle", "in the center")}
RELATION_WORDS = {"left": ("to the left of", "left of", "on the left of"),
                  "right": ("to the right of", "right of", "on the right of"),
                  "above": ("above", "over", "above"), "below": ("below", "under", "beneath")}
# {np} / {pos}; {a} {r} {b} = "a is r of b", {ir} = inverse relation; {l} = list, {be} = is/are.
SINGLE_POS = ("{np} {pos}", "{pos} there is {np}", "there is {np} {pos}", "{np} is {pos}",
              "a picture of {np} {pos}", "{pos} is {np}", "an image showing {np} {pos}", "{np} placed {pos}")
SINGLE = ("{np}", "there is {np}", "a picture of {np}", "an image showing {np}",
          "{np} on a plain background", "a photo of {np}")
RELATION = ("{a} {r} {b}", "{a} is {r} {b}", "there is {a} {r} {b}", "{b} {ir} {a}", "{b} is {ir} {a}",
            "{r} {b} there is {a}", "{r} {b} is {a}", "a picture of {a} {r} {b}")
GROUPS = ("{l}", "there {be} {l}", "a picture of {l}", "an image with {l}", "{l} on a plain background",
          "we can see {l}", "a photo of {l}")


@dataclass
class _Style:
    """Which optional words an object's noun phrase carries, and how they are worded."""

    size: str | None
    fill_adj: str | None
    fill_post: str | None
    orient: str | None
    colour_after: bool
    say_one: bool


def _style(obj: SceneObject, d: Draws, mention: Collection[str] | None) -> _Style:
    u = [d.u() for _ in range(9)]  # fixed count: see the module docstring

    def on(attr: str, p: float) -> bool:
        return (attr in mention) if mention is not None else p > 0 and u[OPTIONAL.index(attr)] < p

    size = SIZE_WORDS[obj.size][int(u[4] * 2) % len(SIZE_WORDS[obj.size])] if on("size", 0.75) else None
    fill_adj = fill_post = None
    if on("fill", 0.35 if obj.fill == "solid" else 0.8):
        if u[5] < 0.7:
            fill_adj = FILL_ADJ[obj.fill][int(u[6] * 2) % len(FILL_ADJ[obj.fill])]
        else:
            fill_post = FILL_POST[obj.fill][int(u[6] * 2) % len(FILL_POST[obj.fill])]
    orient = None
    if obj.shape in ORIENTED_SHAPES and on("orientation", 0.7):
        words = (CROSS_ORIENT_WORDS if obj.shape == "cross" else ORIENT_WORDS)[obj.orientation]
        orient = words[int(u[7] * 2) % len(words)]
    return _Style(size, fill_adj, fill_post, orient, colour_after=u[8] < 0.12, say_one=u[8] > 0.85)


def _noun_phrase(obj: SceneObject, st: _Style) -> str:
    noun = obj.shape if obj.count == 1 else obj.shape + ("es" if obj.shape.endswith("ss") else "s")
    words = [w for w in (st.size, st.fill_adj, st.orient) if w]
    words += [noun, "in", obj.colour] if st.colour_after else [obj.colour, noun]
    if st.fill_post:
        words.append(st.fill_post)
    if obj.count > 1:
        det = NUMBER_WORDS[obj.count]
    elif st.say_one:
        det = "one"
    else:
        det = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([det, *words])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _shorten(styles: list[_Style], mention: Collection[str] | None) -> bool:
    """Drop one optional word (latest object first); False when nothing is left to drop."""
    for field, attr in (("fill_post", "fill"), ("orient", "orientation"), ("fill_adj", "fill"),
                        ("size", "size")):
        if mention is not None and attr in mention:
            continue
        for st in reversed(styles):
            if getattr(st, field):
                setattr(st, field, None)
                return True
    for st in styles:
        if st.colour_after:
            st.colour_after = False
            return True
    return False


def caption(spec: SceneSpec, rng: np.random.Generator | Draws,
            mention: Collection[str] | None = None) -> str:
    """One caption for `spec`. `mention` (a subset of OPTIONAL) fixes which optional attributes are
    named, for diagnostic pairs; None chooses at random."""
    d = rng if isinstance(rng, Draws) else Draws(rng)
    styles = [_style(o, d, mention) for o in spec.objects]
    u_tpl, u_word, u_pos = d.u(), d.u(), d.u()
    order_keys = [d.u() for _ in range(3)]
    while True:
        text = _compose(spec, styles, u_tpl, u_word, u_pos, order_keys, mention)
        if len(text.split()) <= MAX_WORDS or not _shorten(styles, mention):
            return text


def _compose(spec: SceneSpec, styles: list[_Style], u_tpl: float, u_word: float, u_pos: float,
             order_keys: list[float], mention: Collection[str] | None) -> str:
    def pick(seq: tuple[str, ...]) -> str:
        return seq[int(u_tpl * len(seq))]

    nps = [_noun_phrase(o, st) for o, st in zip(spec.objects, styles)]
    if spec.relation is not None:
        i, j, rel = spec.relation
        r = RELATION_WORDS[rel][int(u_word * 3)]
        ir = RELATION_WORDS[INVERSE_RELATION[rel]][int(u_word * 3)]
        return pick(RELATION).format(a=nps[i], b=nps[j], r=r, ir=ir)
    if spec.position is not None and len(nps) == 1:
        say_pos = ("position" in mention) if mention is not None else u_pos < 0.9
        if say_pos:
            return pick(SINGLE_POS).format(np=nps[0], pos=POSITION_WORDS[spec.position][int(u_word * 3)])
        return pick(SINGLE).format(np=nps[0])
    order = sorted(range(len(nps)), key=lambda k: order_keys[k % 3])
    first = spec.objects[order[0]]
    return pick(GROUPS).format(l=_join([nps[k] for k in order]), be="is" if first.count == 1 else "are")
