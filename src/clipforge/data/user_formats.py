"""Readers behind `open_dataset`: each format's file list and captions, read up front without any image.

A reader fills a `Records` table (one row per sample: how messages name it, where it came from, how
to find its image bytes, its captions), kept in flat columns so a million rows cost a few hundred
bytes each. Images are decoded only by `decode`, when a sample is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from array import array
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

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

    def __init__(self, on_error: str, sep: str | None) -> None:
        self.on_error, self.sep = on_error, sep
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

    def add(self, ident: str, src: int, pos: Any, caption_value: Any, loc: tuple[int, ...] = ()) -> None:
        if type(caption_value) is str and not self.sep and caption_value.strip() == caption_value and caption_value:
            caps: tuple[str, ...] = (caption_value,)  # the common case, without the general split
        else:
            caps = self.split(caption_value)
        if not caps:
            self.reject(ident, self._where(src, pos), "no caption")
            return
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
    raise ClipforgeError(f"{file}: no {what} column {key!r} (columns: {shown}); choose one with {what}_key")


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
    img = pick(columns, image_key, "image", IMAGE_ALIASES, "image", path)
    cap = pick(columns, caption_key, "caption", CAPTION_ALIASES, "caption", path)
    ii, ci = columns.index(img), columns.index(cap)
    src, fname = rec.source(path.name, "line"), path.name
    for row in reader:
        n = reader.line_num
        if not row:
            continue
        name = row[ii] if ii < len(row) else ""
        caption = row[ci] if ci < len(row) else None
        if not name.strip():
            rec.reject(f"line {n}", f"line {n} of {fname}", f"no {img!r}")
            continue
        if not clean:
            bad = _first_not_utf8(name, caption)
            if bad is not None:
                shown = name if bad[0] == "caption" else f"line {n}"
                rec.reject(shown.encode("utf-8", "backslashreplace").decode(), f"line {n} of {fname}",
                           f"{bad[0]} is not valid UTF-8 (byte {bad[1]})")
                continue
        rec.add(name, src, n, caption)


def _first_not_utf8(name: str, caption: Any) -> tuple[str, str] | None:
    for value, what in ((name, "image name"), (caption, "caption")):
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
    img = pick(columns, image_key, "image", IMAGE_ALIASES, "image", path)
    cap = pick(columns, caption_key, "caption", CAPTION_ALIASES, "caption", path)
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
        rec.add(name, src, n, row.get(cap))


_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's "__key__.ext" split


def _index_shard(shard: str, caption_key: str, rec: Records, seen_exts: set[str]) -> int:
    """Index one tar: group members by key, read captions, point at image bytes. Returns #captioned."""
    groups = _tar_groups(shard, rec)
    name, captioned = Path(shard).name, 0
    rec.shards.append(shard)
    src = rec.source(name, "key")
    with open(shard, "rb") as f:

        def read(ref: tuple[int, int]) -> bytes:
            f.seek(ref[0])
            return f.read(ref[1])

        for key, members in groups.items():
            seen_exts.update(members)
            where = f"key {key} in {name}"
            caption: Any = None
            try:
                caption = caption_of(members, caption_key, read)
            except UnicodeDecodeError:
                rec.reject(f"{name}:{key}", where, "caption is not valid UTF-8")
                captioned += 1
                continue
            captioned += caption is not None
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                rec.reject(f"{name}:{key}", where, "missing (no " + "/".join(IMAGE_EXTS) + " member)")
                continue
            rec.add(f"{name}:{key}.{ext}", src, 0, caption, members[ext])
    return captioned


def _tar_groups(shard: str, rec: Records) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (offset, size)}} of an uncompressed tar shard. A shard cut short (no end-of-archive marker,
    or a member's data past the end of the file) is handled like a corrupt image: the sample it ends in is
    dropped and counted (`on_error` skip), or the shard is refused in one line (raise)."""
    from .tar_shards import _CUT, Truncated, _watched_headers

    info_class, seen = _watched_headers()
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    cut = False
    try:
        with tarfile.open(shard, "r:", tarinfo=info_class) as tf:
            for m in tf:
                match = _WDS_KEY.match(m.name) if m.isfile() else None
                if match:
                    key, ext = match.group(1), match.group(2).lower()
                    groups.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except tarfile.ReadError as e:
        if not _CUT.search(str(e)) and groups:
            raise ClipforgeError(f"{shard}: not an uncompressed tar shard ({e})") from None
        if not groups and seen["last"] != "short":
            raise ClipforgeError(f"{shard}: not an uncompressed tar shard ({e})") from None
        cut = True
    size = os.path.getsize(shard)
    cut = cut or seen["last"] != "end" or any(o + n > size for ms in groups.values() for o, n in ms.values())
    if cut:
        last = next(reversed(groups), None)
        t = Truncated(shard, last, len(groups) - (last is not None))
        if rec.on_error == "raise":
            raise ClipforgeError(t.message())
        if last is not None:
            groups.pop(last)
        rec.reject(t.ident, f"shard {Path(shard).name}", t.reason)
    return groups


def caption_of(members: dict[str, Any], caption_key: str, read: Any) -> Any:
    """A WebDataset sample's caption: member `caption_key`, else `txt` (default key only), else json field."""
    if caption_key in members:
        return read(members[caption_key]).decode("utf-8")
    if "txt" in members and caption_key == "caption":  # an explicit key means that key
        return read(members["txt"]).decode("utf-8")
    if "json" in members:
        try:
            return json.loads(read(members["json"])).get(caption_key)
        except (json.JSONDecodeError, AttributeError):
            return None
    return None


def read_shards(shards: list[str], caption_key: str, rec: Records) -> None:
    rec.kind = "tar"
    seen: set[str] = set()
    captioned = sum(_index_shard(s, caption_key, rec, seen) for s in shards)
    if seen and not captioned:
        raise ClipforgeError(
            f"{shards[0]}: no caption: no {caption_key!r} or 'txt' member and no {caption_key!r} "
            f"field in 'json' (extensions: {', '.join(sorted(seen))}); choose one with caption_key"
        )
