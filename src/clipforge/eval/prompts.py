"""Class names and prompt templates for zero-shot classification, in CLIP_benchmark's file formats.

* class names: a text file with one name per line (CLIP_benchmark's ``classnames.txt``), a JSON list,
  or a JSON object ``{dataset: [names]}`` (its ``en_classnames.json``; pick the entry with `key`);
* templates: "openai" (the 80 ImageNet templates of OpenAI's CLIP prompt-engineering notebook),
  "default" ("a photo of a {c}."), or a file: one template per line, a JSON list, or CLIP_benchmark's
  ``{dataset: [templates]}`` (`key`). A template names the class as ``{c}`` (CLIP_benchmark) or ``{}``.

Every problem with a file is one `ClipforgeError` line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError

DEFAULT_TEMPLATES = ("a photo of a {c}.",)

# OpenAI CLIP's 80 ImageNet prompt templates (notebooks/Prompt_Engineering_for_ImageNet.ipynb), in their order.
OPENAI_TEMPLATES = tuple(
    t.replace("{}", "{c}")
    for t in (
        "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
        "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
        "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
        "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
        "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
        "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
        "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
        "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
        "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
        "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
        "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
        "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
        "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
        "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
        "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
        "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
        "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
        "a photo of a small {}.", "a tattoo of the {}.",
    )
)

NAMED_TEMPLATES = {"openai": OPENAI_TEMPLATES, "default": DEFAULT_TEMPLATES}


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClipforgeError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise ClipforgeError(f"{path}: a folder, expected a {what} file") from None
    except UnicodeDecodeError as e:
        raise ClipforgeError(f"{path}: not valid UTF-8 text (byte {e.start}), expected a {what} file") from None
    except OSError as e:
        raise ClipforgeError(f"{path}: cannot read {what} file ({e.strerror or e})") from None


def _entries(path: Path, key: str | None, what: str) -> list[tuple[str, Any]]:
    """(where, value) of a file's entries: its non-blank lines ("line 3"), or the items of its JSON list
    or of the list under `key` of its JSON object ("entry 3")."""
    text = _read_text(path, what)
    head = text.lstrip()[:1]
    if head not in ("[", "{"):
        if key is not None:
            raise ClipforgeError(f"{path}: key {key!r} given, but the file is plain text, not a JSON object")
        return [(f"line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClipforgeError(f"{path}: invalid JSON ({e.msg}, line {e.lineno}), expected a {what} file") from None
    if isinstance(data, dict):
        data = _pick_key(path, data, key)
    elif key is not None:
        raise ClipforgeError(f"{path}: key {key!r} given, but the file holds a JSON list, not an object")
    if not isinstance(data, list):
        raise ClipforgeError(f"{path}: expected a JSON list of {what}s, got {type(data).__name__}")
    return [(f"entry {i}", v) for i, v in enumerate(data, 1)]


def _pick_key(path: Path, data: dict[str, Any], key: str | None) -> Any:
    if key is None and len(data) == 1:
        return next(iter(data.values()))
    if key is None or key not in data:
        shown = ", ".join(list(data)[:20]) + (", ..." if len(data) > 20 else "")
        ask = "pass key" if key is None else f"no key {key!r}"
        raise ClipforgeError(f"{path}: a JSON object of {len(data)} datasets ({ask}; keys: {shown})")
    return data[key]


def read_classnames(path: str | os.PathLike[str], n_classes: int | None = None, key: str | None = None) -> list[str]:
    """Class names from a file (one per line, a JSON list, or `{dataset: [names]}` with `key`), in
    class-index order. `n_classes`: the dataset's class count, which the file must match."""
    p = Path(path).expanduser()
    names = []
    for where, value in _entries(p, key, "class name"):
        if not isinstance(value, str) or not value.strip():
            raise ClipforgeError(f"{p}: {where} is not a class name: {value!r}")
        names.append(value.strip())
    if not names:
        raise ClipforgeError(f"{p}: no class names")
    if n_classes is not None and len(names) != n_classes:
        raise ClipforgeError(f"{p}: {len(names)} class names, but the dataset has {n_classes} classes")
    return names


def check_template(template: str, where: str) -> str:
    """`template` if it names the class as {c} or {} and formats; else a one-line error at `where`."""
    if "{c}" not in template and "{}" not in template:
        raise ClipforgeError(f"{where}: template {template!r} has no {{c}} or {{}} for the class name")
    try:
        template.format("x", c="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ClipforgeError(f"{where}: template {template!r} does not format ({type(e).__name__}: {e}); "
                             "write a literal brace as {{ or }}") from None
    return template


def read_templates(spec: str | os.PathLike[str], key: str | None = None) -> list[str]:
    """Prompt templates: "openai" (80), "default" (1), or a file (one per line, a JSON list, or
    `{dataset: [templates]}` with `key`). Each must contain {c} or {}."""
    s = os.fspath(spec)
    if s.lower() in NAMED_TEMPLATES and not Path(s).exists():
        return list(NAMED_TEMPLATES[s.lower()])
    p = Path(s).expanduser()
    if not p.exists():
        raise ClipforgeError(f"templates {s!r}: not 'openai', 'default' or an existing file")
    out = []
    for where, value in _entries(p, key, "template"):
        if not isinstance(value, str):
            raise ClipforgeError(f"{p}: {where} is not a template string: {value!r}")
        out.append(check_template(value, f"{p}: {where}"))
    if not out:
        raise ClipforgeError(f"{p}: no templates")
    return out
