"""Caption styles for `SceneSpec`s: `full` (the default), `alt` (short web alt-text) and `dense`.

* `full` is `text.caption`, unchanged: colour, shape, count and relation always named,
  at most 20 words (what every ancestry and benchmark so far was trained and measured on).
* `alt` mimics the web alt-text OpenAI's CLIP was trained on: one object group, named by colour and
  shape (by shape alone about a third of the time), sometimes one more attribute (size, fill or
  orientation), in varied phrasings. It never names a count (no number words, always the singular
  noun), a position, a relation or any other object: it is true of the image but leaves most of it out.
* `dense` mimics long generated captions (ShareGPT4V): every object group with every attribute
  (count, size, fill, orientation for the shapes that have one, colour, shape), the total count,
  a sentence binding each colour to its shape, the position of a lone object and the relations
  between objects: the scene's own relation, and for other scenes every pair of groups whose copies
  all lie clearly on one side of the other (the same geometry rule the relation scenes obey).

All three are deterministic in the generator; `alt` and `dense` need no fixed number of draws
(diagnostic pairs keep the `full` style, where aligned draws matter).
"""

from __future__ import annotations

import numpy as np

from ...errors import ClipforgeError
from .spec import INVERSE_RELATION, ORIENTED_SHAPES, Draws, SceneObject, SceneSpec
from .text import (
    CROSS_ORIENT_WORDS,
    FILL_ADJ,
    FILL_POST,
    ORIENT_WORDS,
    POSITION_WORDS,
    RELATION_WORDS,
    SIZE_WORDS,
    caption,
)

CAPTION_STYLES = ("full", "alt", "dense")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}

# {np} is the bare noun phrase ("striped red star"); "a" becomes "an" before a vowel afterwards.
ALT_TEMPLATES = ("{np}", "a {np}", "{np} icon", "a {np} icon", "{np} shape", "a {np} on a grey background",
                 "{np} clipart", "image of a {np}", "a simple {np}", "{np} symbol", "drawing of a {np}",
                 "a photo of a {np}", "{np} graphic", "{np} illustration", "cartoon {np}", "flat {np} icon",
                 "{np} vector art", "a {np} sticker")
ALT_SHAPE_ONLY = 1 / 3  # share of alt captions that name the shape without its colour
ALT_EXTRA = 0.3  # share that add one more attribute

# Short intros: the opening list, relations and position should fit a 32-token context more often.
INTRO_ONE = ("a single shape", "one object", "a picture of one shape", "an image of a single object")
INTRO_MANY = ("{n} shapes", "{n} objects in all", "a picture of {n} shapes", "an image with {n} objects",
              "{n} shapes on grey")
DETAIL_P = 0.5  # chance of a per-group attribute sentence (it repeats the list's words, bound to colour)
BIND = ("the {noun} {be} {colour}", "every {shape} in the image is {colour}",
        "the colour of the {noun} is {colour}")
ATTRS = ("the {colour} {noun} {be} {attrs}", "the {noun} that {be} {colour} {be} {attrs}")
POS_SENT = ("the {colour} {noun} is {pos} of the image", "it sits {pos}", "the {noun} is placed {pos}")
REL_SENT = ("the {a} {be_a} {r} the {b}", "the {b} {be_b} {ir} the {a}")


def _plural(obj: SceneObject) -> str:
    return obj.shape if obj.count == 1 else obj.shape + ("es" if obj.shape.endswith("ss") else "s")


def _fix_articles(text: str) -> str:
    words = text.split(" ")
    for k in range(len(words) - 1):
        if words[k] == "a" and words[k + 1][:1] in "aeiou":
            words[k] = "an"
    return " ".join(words)


def _orient_word(obj: SceneObject, d: Draws) -> str | None:
    if obj.shape not in ORIENTED_SHAPES:
        return None
    return d.pick((CROSS_ORIENT_WORDS if obj.shape == "cross" else ORIENT_WORDS)[obj.orientation])


def alt_caption(spec: SceneSpec, d: Draws) -> str:
    """A short alt-text caption naming one object group and nothing else of the scene."""
    obj = d.pick(spec.objects)
    words = [] if d.chance(ALT_SHAPE_ONLY) else [obj.colour]
    words.append(obj.shape)  # singular whatever the count: no count is ever expressed
    if d.chance(ALT_EXTRA):
        extra = d.pick(("size", "fill", "orientation") if obj.shape in ORIENTED_SHAPES else ("size", "fill"))
        if extra == "size":
            words.insert(0, d.pick(SIZE_WORDS[obj.size]))
        elif extra == "orientation":
            words.insert(0, _orient_word(obj, d) or "")
        elif d.chance(0.7):
            words.insert(0, d.pick(FILL_ADJ[obj.fill]))
        else:
            words.append(d.pick(FILL_POST[obj.fill]))
    return _fix_articles(d.pick(ALT_TEMPLATES).format(np=" ".join(words)))


def _fill_words(obj: SceneObject, d: Draws, adjective: bool) -> str:
    return d.pick(FILL_ADJ[obj.fill] if adjective else FILL_POST[obj.fill])


def _group_np(obj: SceneObject, d: Draws) -> str:
    """Count, size, fill, orientation, colour and shape of one group: "two small dotted red stars"."""
    adj_fill = d.chance(0.6)
    words = [COUNT_WORDS[obj.count], d.pick(SIZE_WORDS[obj.size])]
    words += [_fill_words(obj, d, True)] if adj_fill else []
    orient = _orient_word(obj, d)
    words += [orient] if orient else []
    words += [obj.colour, _plural(obj)]
    if not adj_fill:
        words.append(_fill_words(obj, d, False))
    return " ".join(words)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def clear_relation(a: SceneObject, b: SceneObject, margin: float = 0.08) -> str | None:
    """"left"/"right"/"above"/"below" when every copy of a lies clearly that way of every copy of b
    (offset along the axis above `margin` and above the offset across it), else None. y grows downwards."""
    for rel, ax, sign in (("left", 0, 1), ("right", 0, -1), ("above", 1, 1), ("below", 1, -1)):
        if all(sign * (q[ax] - p[ax]) > max(margin, abs(q[1 - ax] - p[1 - ax]))
               for p in a.centres for q in b.centres):
            return rel
    return None


def dense_relations(spec: SceneSpec) -> list[tuple[int, int, str]]:
    """The relations a dense caption states: the scene's own, else every clear one between groups."""
    if spec.relation is not None:
        return [spec.relation]
    out = []
    for i in range(len(spec.objects)):
        for j in range(i + 1, len(spec.objects)):
            rel = clear_relation(spec.objects[i], spec.objects[j])
            if rel is not None:
                out.append((i, j, rel))
    return out


def dense_caption(spec: SceneSpec, d: Draws) -> str:
    """A long caption naming every object with all its attributes, the counts, binding and relations."""
    objs = spec.objects
    order = sorted(range(len(objs)), key=lambda _: d.u())
    total = sum(o.count for o in objs)
    intro = d.pick(INTRO_ONE) if total == 1 else d.pick(INTRO_MANY).format(n=COUNT_WORDS[total])
    sentences = [f"{intro}: {_join([_group_np(objs[k], d) for k in order])}"]
    shapes = [o.shape for o in objs]
    binds, details = [], []
    for k in order:
        o = objs[k]
        be = "is" if o.count == 1 else "are"
        noun = _plural(o)
        # "the star" names a group only when no other group shares its shape; else count within the shape.
        tpl = d.pick(BIND) if shapes.count(o.shape) == 1 else "{count} of the {shape}s {be} {colour}"
        binds.append(tpl.format(noun=noun, shape=o.shape, be=be, colour=o.colour, count=COUNT_WORDS[o.count]))
        attrs = [d.pick(SIZE_WORDS[o.size]), _fill_words(o, d, True)]
        orient = _orient_word(o, d)
        attrs += [orient] if orient else []
        if d.chance(DETAIL_P):
            details.append(d.pick(ATTRS).format(colour=o.colour, noun=noun, be=be, attrs=_join(attrs)))
    # Position and relations come straight after the list: a 32-token context keeps them more often.
    if spec.position is not None and len(objs) == 1:
        o = objs[0]
        sentences.append(d.pick(POS_SENT).format(colour=o.colour, noun=_plural(o),
                                                 pos=d.pick(POSITION_WORDS[spec.position])))
    for i, j, rel in dense_relations(spec):
        a, b = objs[i], objs[j]
        w = int(d.u() * 3)
        sentences.append(d.pick(REL_SENT).format(
            a=f"{a.colour} {_plural(a)}", b=f"{b.colour} {_plural(b)}", r=RELATION_WORDS[rel][w],
            ir=RELATION_WORDS[INVERSE_RELATION[rel]][w], be_a="is" if a.count == 1 else "are",
            be_b="is" if b.count == 1 else "are"))
    sentences.append(_join(binds))
    sentences += details
    return _fix_articles(". ".join(sentences) + ".")


def check_style(style: str, where: str = "caption style") -> str:
    """`style` if it is one of CAPTION_STYLES, else a ClipforgeError naming `where`."""
    if style not in CAPTION_STYLES:
        raise ClipforgeError(f"{where} must be one of {', '.join(CAPTION_STYLES)}, got {style!r}")
    return style


def check_share(share: float, where: str = "full_share") -> float:
    """`share` as a float if it is a number from 0 to 1, else a ClipforgeError naming `where`."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:  # NaN fails too
        raise ClipforgeError(f"{where} must be a number from 0 to 1, got {share!r}")
    return float(share)


def caption_styled(spec: SceneSpec, rng: np.random.Generator | Draws, style: str = "full") -> str:
    """One caption of `spec` in `style` (see the module docstring)."""
    check_style(style)
    d = rng if isinstance(rng, Draws) else Draws(rng)
    if style == "full":
        return caption(spec, d)
    return alt_caption(spec, d) if style == "alt" else dense_caption(spec, d)
