"""Readers behind `open_dataset`: each format's file list and captions, read up front without any image.

A reader fills a `Records` table (one row per sample: how messages name it, where it came from, how
to find its image bytes, its captions, its class label), kept in flat columns so a million rows cost a
few hundred bytes each. Images are decoded only by `decode`, when a sample is read. Tables (CSV / TSV /
JSONL) are read here, WebDataset shards in `user_shards`, parquet and `datasets` in `user_tables`.
"""

from __future__ import annotations

import csv
import io
import json
from array import array
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from clipforge.data import user_labels as labels
from clipforge.errors import ClipforgeError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Tried, in order, when the default key is absent: common names in the wild.
IMAGE_ALIASES = ("image", "file_name", "image_path", "path", "filepath")
CAPTION_ALIASES = ("caption", "text", "captions", "txt")


class Bad(Exception):
    """An image that cannot be read; `reason` is short ("missing", "cannot identify image file")."""

    def __init__(self, reason: str, ident: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.ident = reason, ident


def decode(src: str | Path | bytes) -> Image.Image:
    """Open, fully load and convert to RGB; the file handle is closed on return."""
    try:
        fp: Any = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
        with Image.open(fp) as im:
            im.load()
            return im.convert("RGB")  # always a new, detached image
    except FileNotFoundError:
        raise Bad("missing") from None
    except IsADirectoryError:
        raise Bad("is a folder") from None
    except UnidentifiedImageError:
        raise Bad("cannot identify image file") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt image
        msg = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise Bad(f"corrupt ({msg})") from None


def resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


def cell_source(cell: Any, base: Path) -> tuple[Path | bytes, str | None]:
    """A parquet/datasets image cell → (bytes or path, the path it names if any)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"]), cell.get("path")
        if cell.get("path"):
            return resolve(base, cell["path"]), cell["path"]
        raise Bad("missing (empty image cell)")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    if isinstance(cell, str) and cell:
        return resolve(base, cell), cell
    raise Bad("missing (empty image cell)")


def _utf8_problem(s: str) -> str | None:
    """None if `s` (read with surrogateescape) was valid UTF-8, else the first bad byte, e.g. "0xff"."""
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return f"0x{ord(s[e.start]) - 0xDC00:02x}" if 0xDC80 <= ord(s[e.start]) <= 0xDCFF else "?"


class Records:
    """Flat columns, one row per sample. `kind`: "file" (path = base / ident), "tar" or "table".

    `where(i)` says where row i came from ("line 4 of data.csv"); `loc(i)` how to find its image.
    """

    def __init__(self, on_error: str, sep: str | None, label_key: str | None = None) -> None:
        self.on_error, self.sep, self.label_key = on_error, sep, label_key
        self.kind = "file"
        self.base = Path(".")
        self.idents: list[str] = []
        self.captions: list[str | tuple[str, ...]] = []
        self.sources: list[str] = []  # file names rows come from
        self.unit = "line"  # "line" / "row" / "key"
        self._src = array("i")
        self._pos = array("q")
        self._a = array("q")  # tar: offset; table: parquet file / hf row
        self._b = array("q")  # tar: size; table: row group
        self._c = array("q")  # table: row in group
        self.shards: list[str] = []
        self.table: Any = None  # user_tables.ParquetTable / HFTable
        self.bad: list[tuple[str, str]] = []
        # Labels (label_key given): raw cells while reading, then class indices (`finish`).
        self.raw_labels: list[int | str] = []
        self.label_names: list[str] | None = None  # class names the format gives (ClassLabel)
        self.label_where = ""  # how messages name the label column
        self.labels: array | None = None
        self.classnames: list[str] | None = None
        self.has_captions = True
        self.labelled = 0  # tar samples with a label member / field (none at all: a wrong label_key)
        self.no_captions = ""  # why the dataset has none ("no caption column 'caption' in a.csv")

    def __len__(self) -> int:
        return len(self.idents)

    # -- filling ------------------------------------------------------------------------------------
    def source(self, name: str, unit: str) -> int:
        self.sources.append(name)
        self.unit = unit
        return len(self.sources) - 1

    def split(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value if isinstance(value, (list, tuple)) else [value]
        out: list[str] = []
        for v in items:
            if v is None:
                continue
            parts = str(v).split(self.sep) if self.sep else [str(v)]
            out += [p.strip() for p in parts if p.strip()]
        return tuple(out)

    def add(self, ident: str, src: int, pos: Any, caption_value: Any, loc: tuple[int, ...] = (),
            label: Any = None) -> None:
        if type(caption_value) is str and not self.sep and caption_value.strip() == caption_value and caption_value:
            caps: tuple[str, ...] = (caption_value,)  # the common case, without the general split
        else:
            caps = self.split(caption_value)
        # A labelled row may lack a caption (zero-shot needs none); `finish` decides whether that is bad.
        if not caps and self.label_key is None:
            self.reject(ident, self._where(src, pos), "no caption")
            return
        if self.label_key is not None:
            try:
                value = labels.clean(label)
            except labels.BadLabel as e:
                self.reject(ident, self._where(src, pos), str(e))
                return
            if value is None:
                self.reject(ident, self._where(src, pos), f"no label {self.label_key!r}")
                return
            self.raw_labels.append(value)
        self.idents.append(ident)
        self.captions.append(caps[0] if len(caps) == 1 else caps)
        self._src.append(src)
        self._pos.append(pos if isinstance(pos, int) else 0)
        for col, v in zip((self._a, self._b, self._c), loc):
            col.append(v)

    def reject(self, ident: str, where: str, reason: str) -> None:
        if self.on_error == "raise":
            raise ClipforgeError(f"bad sample {ident} ({where}): {reason}")
        # A caption problem names its line: the row has no image name to show, or only that of a good image.
        self.bad.append((ident, f"{reason}, {where}" if "UTF-8" in reason else reason))

    def finish(self) -> None:
        """After reading, with labels: captions are all or nothing, and labels become class indices.

        If some rows have captions, the caption is part of the data and rows without one are bad (as
        without labels); if none has, the dataset has no captions (`has_captions` False).
        """
        if self.label_key is None:
            return
        missing = [i for i, c in enumerate(self.captions) if not c]
        if missing and len(missing) < len(self.captions):
            for i in missing:
                self.reject(self.idents[i], self.where(i), "no caption")
            self._drop(set(missing))
        elif missing:
            self.has_captions = False
            self.no_captions = self.no_captions or "no sample has a caption"
        self.labels, self.classnames = labels.index(self.raw_labels, self.label_names, self.label_where)
        self.raw_labels = []

    def _drop(self, rows: set[int]) -> None:
        keep = [i for i in range(len(self.idents)) if i not in rows]
        for name in ("idents", "captions", "raw_labels"):
            col = getattr(self, name)
            setattr(self, name, [col[i] for i in keep])
        for name in ("_src", "_pos", "_a", "_b", "_c"):
            col = getattr(self, name)
            if len(col):
                setattr(self, name, array(col.typecode, (col[i] for i in keep)))

    # -- reading ------------------------------------------------------------------------------------
    def _where(self, src: int, pos: Any) -> str:
        name = self.sources[src] if self.sources else "?"
        if self.unit == "key":
            return f"key {pos} in {name}"
        return f"{self.unit} {pos} of {name}"

    def where(self, i: int) -> str:
        if self.unit == "key":
            return self._where(self._src[i], self.idents[i].split(":", 1)[1].rsplit(".", 1)[0])
        return self._where(self._src[i], self._pos[i])

    def caption_list(self, i: int) -> list[str]:
        c = self.captions[i]
        return [c] if isinstance(c, str) else list(c)

    def image_source(self, i: int) -> tuple[Path | bytes, str | None]:
        """The image's path or bytes, and the file a table row names (for messages)."""
        if self.kind == "file":
            return resolve(self.base, self.idents[i].strip()), None
        if self.kind == "tar":
            try:
                with open(self.shards[self._src[i]], "rb") as f:
                    f.seek(self._a[i])
                    return f.read(self._b[i]), None
            except FileNotFoundError:
                raise Bad("shard missing") from None
        assert self.table is not None
        loc: Any = (self._a[i], self._b[i], self._c[i]) if self.table.by_group else self._a[i]
        return cell_source(self.table.cell(loc), self.table.base)


def pick(columns: list[str], key: str, default: str, aliases: tuple[str, ...], what: str, file: Any) -> str:
    """The column to use for `key`; the default name falls back to common aliases."""
    if key in columns:
        return key
    if key == default:
        for a in aliases:
            if a in columns:
                return a
    shown = ", ".join(columns) if columns else "none"
    raise ClipforgeError(f"{file}: no {what} column {key!r} (columns: {shown}); choose one with --{what}-key "
                         f"({what}_key in Python)")


def pick_columns(columns: list[str], image_key: str, caption_key: str, file: Any,
                 rec: Records) -> tuple[str, str | None, str | None]:
    """The image, caption and label columns of a table. With a label key the caption column may be
    absent (None): zero-shot classification needs no captions."""
    img = pick(columns, image_key, "image", IMAGE_ALIASES, "image", file)
    lab = None
    if rec.label_key is not None:
        lab = pick(columns, rec.label_key, "", (), "label", file)
        rec.label_where = f"{file}: label column {lab!r}"
    try:
        cap: str | None = pick(columns, caption_key, "caption", CAPTION_ALIASES, "caption", file)
    except ClipforgeError:
        if rec.label_key is None:
            raise
        cap = None
        rec.no_captions = f"no caption column {caption_key!r} in {file}"
    return img, cap, lab


def read_table_file(path: Path, image_key: str, caption_key: str, base: Path, rec: Records) -> None:
    """CSV / TSV / JSONL (and imagefolder metadata files). Invalid UTF-8 is found per line, not per file."""
    rec.kind, rec.base = "file", base
    if path.suffix.lower() == ".jsonl":
        _read_jsonl(path, image_key, caption_key, rec)
        return
    raw = path.read_bytes()
    try:  # the common case, checked in one C call: then no cell needs its own check
        text, clean = raw.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        text, clean = raw.decode("utf-8-sig", errors="surrogateescape"), False
    del raw
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    columns = next(reader, [])
    if not columns:
        raise ClipforgeError(f"{path}: empty file, expected a header row / JSON objects")
    if any(_utf8_problem(c) for c in columns):
        raise ClipforgeError(f"{path}: line 1 (the header) is not valid UTF-8")
    img, cap, lab = pick_columns(columns, image_key, caption_key, path, rec)
    ii = columns.index(img)
    ci = columns.index(cap) if cap is not None else len(columns)  # past every row: no caption
    li = columns.index(lab) if lab is not None else len(columns)
    src, fname = rec.source(path.name, "line"), path.name
    for row in reader:
        n = reader.line_num
        if not row:
            continue
        name = row[ii] if ii < len(row) else ""
        caption = row[ci] if ci < len(row) else None
        label = row[li] if li < len(row) else None
        if not name.strip():
            rec.reject(f"line {n}", f"line {n} of {fname}", f"no {img!r}")
            continue
        if not clean:
            bad = _first_not_utf8(name, caption, label)
            if bad is not None:
                shown = name if bad[0] != "image name" else f"line {n}"
                rec.reject(shown.encode("utf-8", "backslashreplace").decode(), f"line {n} of {fname}",
                           f"{bad[0]} is not valid UTF-8 (byte {bad[1]})")
                continue
        rec.add(name, src, n, caption, label=label)


def _first_not_utf8(name: str, caption: Any, label: Any = None) -> tuple[str, str] | None:
    for value, what in ((name, "image name"), (caption, "caption"), (label, "label")):
        byte = _utf8_problem(value) if isinstance(value, str) else None
        if byte is not None:
            return what, byte
    return None


def _read_jsonl(path: Path, image_key: str, caption_key: str, rec: Records) -> None:
    rows: list[tuple[int, Any]] = []
    with open(path, "rb") as fb:
        for n, raw in enumerate(fb, 1):
            if not raw.strip():
                continue
            try:
                rows.append((n, json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))))
            except UnicodeDecodeError as e:
                rows.append((n, UnicodeError(f"0x{raw[e.start]:02x}")))
            except json.JSONDecodeError:
                rows.append((n, None))
    columns = list(dict.fromkeys(k for _, r in rows if isinstance(r, dict) for k in r))
    if not columns:
        raise ClipforgeError(f"{path}: empty file, expected a header row / JSON objects")
    img, cap, lab = pick_columns(columns, image_key, caption_key, path, rec)
    src, fname = rec.source(path.name, "line"), path.name
    for n, row in rows:
        where = f"line {n} of {fname}"
        if isinstance(row, UnicodeError):
            rec.reject(f"line {n}", where, f"not valid UTF-8 (byte {row})")
            continue
        if not isinstance(row, dict):
            rec.reject(f"line {n}", where, "not a JSON object")
            continue
        name = row.get(img)
        if not isinstance(name, str) or not name.strip():
            rec.reject(f"line {n}", where, f"no {img!r}")
            continue
        rec.add(name, src, n, row.get(cap) if cap else None, label=row.get(lab) if lab else None)
