"""Class labels in users' data (`open_dataset(..., label_key=...)`): cells → class indices and names.

Rules, the same for every format:

* string labels → `classnames` is the distinct labels in `str` order; a sample's label is its index;
* integer labels (ints, or strings of digits: CSV cells are text) → `classnames` is "0" .. "max", the
  label is the integer itself, so a class-names file in the dataset's index order lines up with it;
* names given by the format (a `datasets` ClassLabel) → `classnames` is those names, labels are indices
  into them;
* a missing or empty label (None, "", NaN, ClassLabel's -1) makes the row bad, like a missing caption.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Sequence
from typing import Any

from clipforge.errors import ClipforgeError

MAX_INDEX = 1_000_000  # an integer label above this is an identifier, not a class index


class BadLabel(ValueError):
    """A label cell that cannot name a class; the message is the short reason."""


def clean(value: Any) -> int | str | None:
    """A label cell as an int or a stripped str; None when missing or empty; `BadLabel` when unusable."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadLabel("label is not valid UTF-8") from None
    if isinstance(value, bool):  # a bool is an int to Python, but a True/False class to a user
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not value.is_integer():
            return str(value)
        value = int(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return clean(value.item())
    if isinstance(value, int):
        if value == -1:  # datasets' ClassLabel marks a missing label with -1
            return None
        if value < 0:
            raise BadLabel(f"label {value} is negative")
        return value
    if isinstance(value, (list, tuple, dict)):
        raise BadLabel(f"label is a {type(value).__name__}, not one class")
    s = str(value).strip()
    return s or None


def _is_index(v: int | str) -> bool:
    return isinstance(v, int) or (v.isascii() and v.isdigit())


def index(raw: Sequence[int | str], names: list[str] | None, what: str) -> tuple[array, list[str]]:
    """Class indices of `raw` labels and the class names, by the module's rules. `what` names the
    column in messages ("column 'category' of data.csv")."""
    if names is not None:
        pos = {n: i for i, n in enumerate(names)}
        out = array("q")
        for v in raw:
            i = int(v) if _is_index(v) else pos.get(str(v), -1)
            if not 0 <= i < len(names):
                raise ClipforgeError(f"{what}: label {v!r} is not one of its {len(names)} class names")
            out.append(i)
        return out, list(names)
    if all(_is_index(v) for v in raw):
        ints = array("q", (int(v) for v in raw))
        top = max(ints, default=-1)
        if top >= MAX_INDEX:
            raise ClipforgeError(f"{what}: integer label {top} is too large for a class index "
                                 f"(at most {MAX_INDEX - 1:,}); use class indices or names")
        return ints, [str(i) for i in range(top + 1)]
    classnames = sorted({str(v) for v in raw})
    pos = {n: i for i, n in enumerate(classnames)}
    return array("q", (pos[str(v)] for v in raw)), classnames


def classlabel_names(schema_metadata: dict[bytes, bytes] | None, column: str) -> list[str] | None:
    """ClassLabel names of `column` from a parquet schema's "huggingface" metadata (what `datasets`
    writes), or None."""
    raw = (schema_metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        info = json.loads(raw)
        feat = (info.get("info") or {}).get("features", {}).get(column)
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and isinstance(feat.get("names"), list):
        return [str(n) for n in feat["names"]]
    return None


def member_label(members: dict[str, Any], label_key: str, read: Any) -> Any:
    """A WebDataset sample's raw label: member `label_key` (e.g. "cls", text), else the json field."""
    if label_key in members:
        return read(members[label_key])  # bytes: `clean` decodes them
    if "json" in members:
        try:
            return json.loads(read(members["json"])).get(label_key)
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            return None
    return None
