"""Users' own image-text data through one call: `open_dataset(spec)`.

The format is detected from `spec`:

* ``captions.csv`` / ``.tsv`` / ``.jsonl`` — one row per image; image paths are relative to the
  file's folder (or `root`). A JSONL caption may be a list → several captions per image; a CSV/TSV
  cell can hold several captions split by `caption_sep`.
* a folder with ``metadata.csv`` / ``metadata.jsonl`` / ``metadata.tsv`` (Hugging Face
  "imagefolder" style: a ``file_name`` column plus a caption column); ``split`` picks a
  ``<folder>/<split>/`` subfolder when there is one.
* WebDataset shards — ``x.tar``, a brace pattern ``shards-{000..003}.tar``, a glob, or a folder
  of ``.tar`` files. Samples are grouped by ``__key__``; the image is the ``jpg``/``jpeg``/``png``
  /``webp`` member, the caption the member named `caption_key`, else ``txt`` (for the default
  key "caption" only), else the `caption_key` field of the ``json`` member. Shards are indexed
  once (uncompressed tar only) so samples can be read in any order.
* ``datasets`` folders written by ``save_to_disk`` (a ``DatasetDict`` needs `split` unless it has
  one split) and ``.parquet`` files (or a folder of them). The image column may be a ``datasets``
  Image struct ``{"bytes", "path"}``, raw bytes, or a path string.

Bad samples (missing or undecodable image, no caption) are handled by `on_error`: "raise" raises
`ClipforgeError` naming the file and row; "skip" drops them, lists them in `dataset.skipped` and
warns once with a summary. By default every image is decoded once up front (`validate=True`) so
bad ones are found before training starts; with ``validate=False`` they are found when read, and
in "skip" mode the next good sample is returned instead.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tarfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from PIL import Image, UnidentifiedImageError

from clipforge.data.base import ImageTextDataset, Sample
from clipforge.errors import ClipforgeError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.tsv")
# Tried, in order, when the default key is absent: common names in the wild.
_IMAGE_ALIASES = ("image", "file_name", "image_path", "path", "filepath")
_CAPTION_ALIASES = ("caption", "text", "captions", "txt")
_PROGRESS_OVER = 1000  # show a progress bar when validating more items than this


class _TarRef(NamedTuple):
    shard: str
    offset: int
    size: int


@dataclass(slots=True)
class _Rec:
    ident: str  # how messages name the image: its path as written, or "shard.tar:key.jpg"
    where: str  # where the row came from, e.g. "line 4 of data.csv"
    loc: Any  # Path | _TarRef | a table locator (parquet / datasets rows)
    captions: list[str]


class _Bad(Exception):
    """An image that cannot be read; `reason` is short ("missing", "cannot identify image file")."""

    def __init__(self, reason: str, ident: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.ident = reason, ident


# ----------------------------------------------------------------------------------------------
# Reading one image


def _decode(src: Path | bytes) -> Image.Image:
    """Open, fully load and convert to RGB; the file handle is closed on return."""
    try:
        fp: Any = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
        with Image.open(fp) as im:
            im.load()
            return im.convert("RGB")  # always a new, detached image
    except FileNotFoundError:
        raise _Bad("missing") from None
    except IsADirectoryError:
        raise _Bad("is a folder") from None
    except UnidentifiedImageError:
        raise _Bad("cannot identify image file") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt image
        msg = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise _Bad(f"corrupt ({msg})") from None


def _cell_source(cell: Any, base: Path) -> tuple[Path | bytes, str | None]:
    """A parquet/datasets image cell → (bytes or path, the path it names if any)."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"]), cell.get("path")
        if cell.get("path"):
            return _resolve(base, cell["path"]), cell["path"]
        raise _Bad("missing (empty image cell)")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), None
    if isinstance(cell, str) and cell:
        return _resolve(base, cell), cell
    raise _Bad("missing (empty image cell)")


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


# ----------------------------------------------------------------------------------------------
# Row-oriented tables whose image cells are read on demand


class _ParquetTable:
    """Image cells of parquet files, read one row group at a time (a few groups cached)."""

    def __init__(self, files: list[str], column: str, base: Path) -> None:
        self.files, self.column, self.base = files, column, base
        self._groups: OrderedDict[tuple[int, int], list[Any]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without cached row groups.
        return {**self.__dict__, "_groups": OrderedDict()}

    def cell(self, loc: tuple[int, int, int]) -> Any:
        import pyarrow.parquet as pq

        f, g, r = loc
        if (f, g) not in self._groups:
            col = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.column]).column(0)
            self._groups[(f, g)] = col.to_pylist()
            if len(self._groups) > 4:
                self._groups.popitem(last=False)
        return self._groups[(f, g)][r]


class _HFTable:
    """Image cells of a `datasets.Dataset` (memory-mapped; pickles by file reference)."""

    def __init__(self, ds: Any, column: str, base: Path) -> None:
        self.ds, self.column, self.base = ds, column, base

    def cell(self, loc: int) -> Any:
        return self.ds[loc][self.column]


# ----------------------------------------------------------------------------------------------
# The dataset


class UserDataset(ImageTextDataset):
    """Samples from a user's files; build it with `open_dataset`.

    `skipped` lists ``(identifier, reason)`` for every sample left out; `validate()` decodes all
    images once and drops bad ones.
    """

    def __init__(
        self,
        name: str,
        source: str,
        records: list[_Rec],
        *,
        on_error: str = "skip",
        skipped: list[tuple[str, str]] | None = None,
        table: _ParquetTable | _HFTable | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.records = records
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        self._table = table
        self._total = len(records) + len(self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: _Rec) -> Image.Image:
        loc = rec.loc
        if isinstance(loc, Path):
            return _decode(loc)
        if isinstance(loc, _TarRef):
            try:
                with open(loc.shard, "rb") as f:
                    f.seek(loc.offset)
                    data = f.read(loc.size)
            except FileNotFoundError:
                raise _Bad("shard missing") from None
            return _decode(data)
        assert self._table is not None
        src, named = _cell_source(self._table.cell(loc), self._table.base)
        try:
            return _decode(src)
        except _Bad as e:
            # Name the file a row points at, which is more useful than the row number alone.
            raise _Bad(e.reason, f"{rec.ident} ({named})" if named else None) from None

    def _error(self, rec: _Rec, bad: _Bad) -> ClipforgeError:
        ident = bad.ident or rec.ident
        return ClipforgeError(f"cannot read image {ident} ({rec.where}): {bad.reason}")

    def validate(self, progress: bool | None = None) -> list[tuple[str, str]]:
        """Decode every image once; drop bad ones (skip mode) or raise on the first (raise mode).

        Returns the bad samples found by this pass; they are also appended to `skipped`.
        """
        items: Iterable[_Rec] = self.records
        if progress or (progress is None and len(self.records) > _PROGRESS_OVER):
            from tqdm.auto import tqdm

            items = tqdm(self.records, desc=f"checking {self.name}", unit="img")
        good, found = [], []
        for rec in items:
            try:
                self._load(rec)
            except _Bad as e:
                if self.on_error == "raise":
                    raise self._error(rec, e) from None
                found.append((e.ident or rec.ident, e.reason))
                continue
            good.append(rec)
        self.records = good
        self.skipped.extend(found)
        return found

    def summary(self) -> str:
        """One line: "skipped 2 of 1,000 samples: a.jpg (missing), b.jpg (...)"."""
        shown = ", ".join(f"{i} ({r})" for i, r in self.skipped[:5])
        more = len(self.skipped) - 5
        tail = f", and {more:,} more (see dataset.skipped)" if more > 0 else ""
        return f"{self.source}: skipped {len(self.skipped):,} of {self._total:,} samples: {shown}{tail}"

    def __getitem__(self, i: int) -> Sample:
        n = len(self.records)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        for step in range(n):
            j = (i + step) % n
            rec = self.records[j]
            try:
                image = self._load(rec)
            except _Bad as e:
                if self.on_error == "raise":
                    raise self._error(rec, e) from None
                # Found at read time (validate=False or the file changed): keep training going
                # with the next sample, and say so once per bad image.
                ident = e.ident or rec.ident
                if all(ident != s for s, _ in self.skipped):
                    self.skipped.append((ident, e.reason))
                    warnings.warn(f"{self.source}: skipping {ident} ({e.reason})", stacklevel=2)
                continue
            meta = {"id": rec.ident, "source": self.source, "index": j}
            return Sample(image=image, captions=list(rec.captions), label=None, meta=meta)
        raise ClipforgeError(f"{self.source}: none of its {n:,} images can be read")


# ----------------------------------------------------------------------------------------------
# Building records, one reader per format


class _Collector:
    """Accumulates good records and rejects rows according to `on_error`."""

    def __init__(self, on_error: str, sep: str | None) -> None:
        self.on_error, self.sep = on_error, sep
        self.records: list[_Rec] = []
        self.bad: list[tuple[str, str]] = []

    def captions(self, value: Any) -> list[str]:
        if value is None:
            return []
        items = value if isinstance(value, (list, tuple)) else [value]
        out = []
        for v in items:
            if v is None:
                continue
            parts = str(v).split(self.sep) if self.sep else [str(v)]
            out += [p.strip() for p in parts if p.strip()]
        return out

    def add(self, ident: str, where: str, loc: Any, caption_value: Any) -> None:
        caps = self.captions(caption_value)
        if not caps:
            self.reject(ident, where, "no caption")
        else:
            self.records.append(_Rec(ident, where, loc, caps))

    def reject(self, ident: str, where: str, reason: str) -> None:
        if self.on_error == "raise":
            raise ClipforgeError(f"bad sample {ident} ({where}): {reason}")
        self.bad.append((ident, reason))


def _pick(columns: list[str], key: str, default: str, aliases: tuple[str, ...], what: str, file: Any) -> str:
    """The column to use for `key`; the default name falls back to common aliases."""
    if key in columns:
        return key
    if key == default:
        for a in aliases:
            if a in columns:
                return a
    shown = ", ".join(columns) if columns else "none"
    flag = f"{what}_key"
    raise ClipforgeError(f"{file}: no {what} column {key!r} (columns: {shown}); choose one with {flag}")


def _read_table_file(path: Path, image_key: str, caption_key: str, base: Path, col: _Collector) -> None:
    """CSV / TSV / JSONL (and imagefolder metadata files)."""
    if path.suffix.lower() == ".jsonl":
        rows: list[tuple[int, Any]] = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((n, json.loads(line)))
                    except json.JSONDecodeError:
                        rows.append((n, None))
        keys = [k for _, r in rows if isinstance(r, dict) for k in r]
        columns = list(dict.fromkeys(keys))
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            columns = list(reader.fieldnames or [])
            rows = [(reader.line_num, r) for r in reader]
    if not columns:
        raise ClipforgeError(f"{path}: empty file, expected a header row / JSON objects")
    img = _pick(columns, image_key, "image", _IMAGE_ALIASES, "image", path)
    cap = _pick(columns, caption_key, "caption", _CAPTION_ALIASES, "caption", path)
    for n, row in rows:
        where = f"line {n} of {path.name}"
        if not isinstance(row, dict):
            col.reject(f"line {n}", where, "not a JSON object")
            continue
        name = row.get(img)
        if not isinstance(name, str) or not name.strip():
            col.reject(f"line {n}", where, f"no {img!r}")
            continue
        col.add(name, where, _resolve(base, name.strip()), row.get(cap))


_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's "__key__.ext" split


def _index_shard(shard: str, caption_key: str, col: _Collector, seen_exts: set[str]) -> int:
    """Index one tar: group members by key, read captions, point at image bytes. Returns #captioned."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                match = _WDS_KEY.match(m.name) if m.isfile() else None
                if match:
                    key, ext = match.group(1), match.group(2).lower()
                    groups.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except tarfile.ReadError as e:
        raise ClipforgeError(f"{shard}: not an uncompressed tar shard ({e})") from None
    name, captioned = Path(shard).name, 0
    with open(shard, "rb") as f:

        def read(ref: tuple[int, int]) -> bytes:
            f.seek(ref[0])
            return f.read(ref[1])

        for key, members in groups.items():
            seen_exts.update(members)
            caption: Any = None
            if caption_key in members:
                caption = read(members[caption_key]).decode("utf-8", "replace")
            elif "txt" in members and caption_key == "caption":  # an explicit key means that key
                caption = read(members["txt"]).decode("utf-8", "replace")
            elif "json" in members:
                try:
                    caption = json.loads(read(members["json"])).get(caption_key)
                except (json.JSONDecodeError, AttributeError):
                    caption = None
            captioned += caption is not None
            where = f"key {key} in {name}"
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                col.reject(f"{name}:{key}", where, "missing (no " + "/".join(IMAGE_EXTS) + " member)")
                continue
            off, size = members[ext]
            col.add(f"{name}:{key}.{ext}", where, _TarRef(shard, off, size), caption)
    return captioned


def _read_shards(shards: list[str], caption_key: str, col: _Collector) -> None:
    seen: set[str] = set()
    captioned = sum(_index_shard(s, caption_key, col, seen) for s in shards)
    if seen and not captioned:
        raise ClipforgeError(
            f"{shards[0]}: no caption: no {caption_key!r} or 'txt' member and no {caption_key!r} "
            f"field in 'json' (extensions: {', '.join(sorted(seen))}); choose one with caption_key"
        )


def _read_parquet(
    files: list[str], image_key: str, caption_key: str, base: Path, col: _Collector
) -> _ParquetTable | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ClipforgeError("reading .parquet needs pyarrow: pip install 'clipforge[data]'") from e
    table: _ParquetTable | None = None
    img_col = None
    for fi, file in enumerate(files):
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        img = _pick(names, image_key, "image", _IMAGE_ALIASES, "image", file)
        cap = _pick(names, caption_key, "caption", _CAPTION_ALIASES, "caption", file)
        if img_col is not None and img != img_col:
            raise ClipforgeError(f"{file}: image column {img!r} differs from {img_col!r} in {files[0]}")
        img_col = img
        captions = pf.read(columns=[cap]).column(0).to_pylist()
        name = Path(file).name
        if pa.types.is_string(pf.schema_arrow.field(img).type) or pa.types.is_large_string(
            pf.schema_arrow.field(img).type
        ):
            # Path strings: cheap to read all, and messages can name each file.
            paths = pf.read(columns=[img]).column(0).to_pylist()
            for row, (p, c) in enumerate(zip(paths, captions)):
                where = f"row {row} of {name}"
                if not p:
                    col.reject(f"{name}:row {row}", where, f"no {img!r}")
                else:
                    col.add(p, where, _resolve(base, p), c)
            continue
        if table is None:
            table = _ParquetTable(list(files), img, base)
        row = 0
        for g in range(pf.num_row_groups):
            for r in range(pf.metadata.row_group(g).num_rows):
                col.add(f"{name}:row {row}", f"row {row} of {name}", (fi, g, r), captions[row])
                row += 1
    return table


def _read_hf(
    folder: Path, split: str | None, image_key: str, caption_key: str, base: Path, col: _Collector
) -> _HFTable | None:
    try:
        import datasets
    except ImportError as e:
        msg = "reading a save_to_disk folder needs datasets: pip install 'clipforge[data]'"
        raise ClipforgeError(msg) from e
    obj = datasets.load_from_disk(str(folder))
    if isinstance(obj, datasets.DatasetDict):
        splits = list(obj)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in obj:
            got = "no split" if split is None else f"split {split!r}"
            raise ClipforgeError(f"{folder}: {got}; it holds splits {', '.join(splits)} (pass split)")
        obj = obj[split]
    names = list(obj.column_names)
    img = _pick(names, image_key, "image", _IMAGE_ALIASES, "image", folder)
    cap = _pick(names, caption_key, "caption", _CAPTION_ALIASES, "caption", folder)
    captions = list(obj[cap])
    feat = obj.features[img]
    if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
        for row, (p, c) in enumerate(zip(list(obj[img]), captions)):
            where = f"row {row} of {folder.name}"
            if not p:
                col.reject(f"row {row}", where, f"no {img!r}")
            else:
                col.add(p, where, _resolve(base, p), c)
        return None
    cells = obj.select_columns([img])
    if isinstance(feat, datasets.Image):
        cells = cells.cast_column(img, datasets.Image(decode=False))  # dicts, not decoded PIL
    for row, c in enumerate(captions):
        col.add(f"row {row}", f"row {row} of {folder.name}", row, c)
    return _HFTable(cells, img, base)


# ----------------------------------------------------------------------------------------------
# Format detection


def _expand_braces(s: str) -> list[str]:
    """Expand ``{000..003}`` ranges and ``{a,b}`` lists, as webdataset URLs use them."""
    m = re.search(r"\{([^{}]*)\}", s)
    if not m:
        return [s]
    inner, head, tail = m.group(1), s[: m.start()], s[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", inner)
    if r:
        a, b = r.groups()
        width = max(len(a), len(b)) if a.startswith("0") or b.startswith("0") else 0
        step = 1 if int(b) >= int(a) else -1
        options = [f"{n:0{width}d}" for n in range(int(a), int(b) + step, step)]
    else:
        options = inner.split(",")
    return [x for o in options for x in _expand_braces(head + o + tail)]


def _many_files(spec: str) -> list[str] | None:
    """Files named by a brace pattern or glob, or None if `spec` is a plain path."""
    if not re.search(r"\{.*\}|[*?\[]", spec):
        return None
    files = []
    for part in _expand_braces(spec):
        if re.search(r"[*?\[]", part):
            hits = sorted(glob.glob(part))
            if not hits:
                raise ClipforgeError(f"no files match {part!r}")
            files += hits
        elif not os.path.isfile(part):
            raise ClipforgeError(f"shard not found: {part} (from {spec})")
        else:
            files.append(part)
    return files


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise ClipforgeError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def open_dataset(
    spec: str | os.PathLike[str],
    *,
    image_key: str = "image",
    caption_key: str = "caption",
    root: str | os.PathLike[str] | None = None,
    on_error: str = "skip",
    split: str | None = None,
    caption_sep: str | None = None,
    validate: bool = True,
    progress: bool | None = None,
) -> UserDataset:
    """Open a user's image-text data, detecting its format (see the module docstring).

    `root` is the folder relative image paths start from (default: the metadata file's folder,
    the image folder, or the dataset folder). `split` is used only by formats that have splits.
    """
    _check_on_error(on_error)
    spec_s = os.fspath(spec)
    col = _Collector(on_error, caption_sep)
    base_override = Path(root).expanduser() if root is not None else None
    table: Any = None
    name = Path(spec_s.rstrip("/")).name

    many = _many_files(spec_s)
    path = Path(spec_s).expanduser()
    if many is not None:
        kinds = {Path(f).suffix.lower() for f in many}
        base = base_override or Path(many[0]).parent
        if kinds == {".tar"}:
            _read_shards(many, caption_key, col)
        elif kinds == {".parquet"}:
            table = _read_parquet(many, image_key, caption_key, base, col)
        else:
            raise ClipforgeError(f"{spec_s}: a pattern must name only .tar or only .parquet files")
    elif not path.exists():
        raise ClipforgeError(f"dataset not found: {spec_s}")
    elif path.is_file():
        suffix = path.suffix.lower()
        base = base_override or path.parent
        if suffix in (".csv", ".tsv", ".jsonl"):
            _read_table_file(path, image_key, caption_key, base, col)
        elif suffix == ".tar":
            _read_shards([str(path)], caption_key, col)
        elif suffix == ".parquet":
            table = _read_parquet([str(path)], image_key, caption_key, base, col)
        else:
            raise ClipforgeError(
                f"{path}: unknown dataset format {suffix or '(no extension)'!r} "
                "(expected .csv, .tsv, .jsonl, .tar, .parquet or a folder)"
            )
    else:
        table = _open_folder(path, split, image_key, caption_key, base_override, col)

    ds = UserDataset(name, spec_s, col.records, on_error=on_error, skipped=col.bad, table=table)
    if validate:
        ds.validate(progress)
    if not len(ds):
        raise ClipforgeError(f"{spec_s}: no usable samples" + (f" ({ds.summary()})" if ds.skipped else ""))
    if ds.skipped:
        warnings.warn(ds.summary(), stacklevel=2)
    return ds


def _open_folder(
    path: Path, split: str | None, image_key: str, caption_key: str, root: Path | None, col: _Collector
) -> Any:
    """Detect a folder's format and read it; returns the lazy image table, if any."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() or (
        path / "dataset_info.json"
    ).is_file():
        return _read_hf(path, split, image_key, caption_key, root or path, col)
    has_meta = any((path / m).is_file() for m in METADATA_FILES)
    if split is not None and (path / split).is_dir() and not has_meta:
        path = path / split  # imagefolder layout with per-split subfolders
    for meta in METADATA_FILES:
        if (path / meta).is_file():
            _read_table_file(path / meta, image_key, caption_key, root or path, col)
            return None
    tars = sorted(str(p) for p in path.glob("*.tar"))
    if tars:
        _read_shards(tars, caption_key, col)
        return None
    parquets = sorted(str(p) for p in path.glob("*.parquet"))
    if parquets:
        return _read_parquet(parquets, image_key, caption_key, root or path, col)
    raise ClipforgeError(
        f"{path}: unknown dataset format (expected metadata.csv/metadata.jsonl, .tar shards, "
        ".parquet files or a datasets save_to_disk folder)"
    )
