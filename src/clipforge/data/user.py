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
  once (uncompressed tar only) so samples can be read in any order; `clipforge.data.webdataset`
  streams them instead (any tar, shuffled with a buffer, split over ranks and workers).
* ``datasets`` folders written by ``save_to_disk`` (a ``DatasetDict`` needs `split` unless it has
  one split) and ``.parquet`` files (or a folder of them). The image column may be a ``datasets``
  Image struct ``{"bytes", "path"}``, raw bytes, or a path string.

Opening reads the file list and the captions only (`user_formats`); images are decoded when a
sample is read. Bad samples are handled by `on_error`: "raise" raises `ClipforgeError` naming the
file and row; "skip" leaves them out and counts them: a row without a usable caption (none, or
not valid UTF-8) at open, a missing or corrupt image when it is read (the next good sample is
returned instead). At the end of every pass through a `reporting` loader (training, embedding and
evaluation use one) the dataset warns with the count and the first names found, also by
DataLoader workers. `validate=True` decodes every image once at open instead, dropping bad ones.

Labels: with `label_key` every format reads a class label per sample — the column of a table, parquet
file or `datasets` folder, or a shard's member named `label_key` (e.g. ``cls``) else that field of its
``json``. The dataset gets `classnames` and each `Sample.label` is an index into it (the rules:
`clipforge.data.user_labels`); a sample without a label is a bad sample, as one without a caption. A
labelled dataset needs no captions: without a caption column it has `has_captions` False (zero-shot
classification works; retrieval refuses it in one line).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.data import user_formats as fmt
from clipforge.data import user_shards as shards
from clipforge.data import user_tables as tables
from clipforge.data.base import ImageTextDataset, Sample
from clipforge.data.loader import SkipLog, in_worker
from clipforge.data.user_formats import Bad, Records
from clipforge.errors import ClipforgeError

log = logging.getLogger("clipforge.data")

IMAGE_EXTS = fmt.IMAGE_EXTS
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.tsv")
_PROGRESS_OVER = 1000  # show a progress bar when validating more items than this
_SHOWN = 5  # bad samples named in a summary


def _file_stat(source: str) -> dict[str, Any]:
    """Path, bytes and modification time of a dataset's file or folder (for a pattern: of every match)."""
    paths = _many_files(source) or [source]
    out: dict[str, Any] = {"path": [str(Path(p).expanduser().resolve()) for p in paths], "bytes": 0, "mtime_ns": 0}
    for p in paths:
        try:
            st = os.stat(Path(p).expanduser())
        except OSError:
            continue
        out["bytes"] += st.st_size
        out["mtime_ns"] = max(out["mtime_ns"], st.st_mtime_ns)
    return out


class UserDataset(ImageTextDataset):
    """Samples from a user's files; build it with `open_dataset`.

    `skipped` lists ``(identifier, reason)`` for every sample left out so far (at open, and by the
    passes reported since); `end_pass()` collects what the last pass found, here and in workers.
    """

    def __init__(self, name: str, source: str, records: Records, *, on_error: str = "skip",
                 skipped: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.source = source
        self.on_error = on_error
        self.label_key = records.label_key
        self.classnames = records.classnames  # None unless opened with a label_key
        self.has_captions = records.has_captions
        self.no_captions = records.no_captions
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        self.passes = 0
        self._rec = records
        self._keep = np.arange(len(records), dtype=np.int64)  # record rows this dataset serves
        self._known_bad: set[int] = set()  # rows found unreadable: skipped without another decode
        self._log = SkipLog()
        self._total = len(records) + len(self.skipped)
        self._stat = _file_stat(source)

    def identity(self) -> dict[str, Any]:
        """Name, path, size and modification time: another file of the same name is other data; and the
        label column when there is one (other labels are another task)."""
        out = {"name": self.name, **self._stat}
        if self.label_key is not None:
            out["label_key"] = self.label_key
        return out

    def __len__(self) -> int:
        return len(self._keep)

    def ident(self, i: int) -> str:
        """How messages name sample `i` (its image path as written, or "shard.tar:key.jpg")."""
        return self._rec.idents[int(self._keep[i])]

    def captions(self, i: int) -> list[str]:
        """Sample `i`'s captions, without reading its image (empty for a labelled dataset without captions)."""
        return self._rec.caption_list(int(self._keep[i]))

    def label(self, i: int) -> int | None:
        """Sample `i`'s class index into `classnames`, without reading its image (None: no label_key)."""
        labels = self._rec.labels
        return None if labels is None else int(labels[int(self._keep[i])])

    def _load(self, row: int):
        src, named = self._rec.image_source(row)
        try:
            return fmt.decode(src)
        except Bad as e:
            # Name the file a table row points at, which is more useful than the row number alone.
            raise Bad(e.reason, f"{self._rec.idents[row]} ({named})" if named else None) from None

    def _error(self, row: int, bad: Bad) -> ClipforgeError:
        ident = bad.ident or self._rec.idents[row]
        return ClipforgeError(f"cannot read image {ident} ({self._rec.where(row)}): {bad.reason}")

    def validate(self, progress: bool | None = None) -> list[tuple[str, str]]:
        """Decode every image once; drop bad ones (skip mode) or raise on the first (raise mode).

        Returns the bad samples found by this pass; they are also appended to `skipped`.
        """
        rows: Any = self._keep
        if progress or (progress is None and len(rows) > _PROGRESS_OVER):
            from tqdm.auto import tqdm

            rows = tqdm(rows, desc=f"checking {self.name}", unit="img")
        good, found = [], []
        for row in rows:
            try:
                self._load(int(row))
            except Bad as e:
                if self.on_error == "raise":
                    raise self._error(int(row), e) from None
                found.append((e.ident or self._rec.idents[int(row)], e.reason))
                continue
            good.append(int(row))
        self._keep = np.asarray(good, dtype=np.int64)
        self.skipped.extend(found)
        return found

    def summary(self) -> str:
        """One line: "skipped 2 of 1,000 samples: a.jpg (missing), b.jpg (...)"."""
        shown = ", ".join(f"{i} ({r})" for i, r in self.skipped[:_SHOWN])
        more = len(self.skipped) - _SHOWN
        tail = f", and {more:,} more (see dataset.skipped)" if more > 0 else ""
        return f"{self.source}: skipped {len(self.skipped):,} of {self._total:,} samples: {shown}{tail}"

    def end_pass(self, complete: bool = True) -> list[tuple[str, str]]:
        """Collect the bad images the pass found (also in workers), mark them, and report.

        Warns with the count and the first names when the pass found new ones; returns the new ones.
        Later passes skip marked images without reading them again (workers forked after this see it).
        """
        self.passes += 1
        known = {i for i, _ in self.skipped}
        new = [(i, r) for i, r in self._log.collect() if i not in known]
        if new:
            self.skipped.extend(new)
            names = {i for i, _ in new}
            # Table rows are named "ident (path)": match on the row's own ident, the part before " (".
            heads = {n.split(" (", 1)[0] for n in names}
            for row, ident in enumerate(self._rec.idents):
                if ident in names or ident in heads:
                    self._known_bad.add(row)
        what = "pass" if complete else "partial pass"
        if new:
            log.warning("%s %d: %s", what, self.passes, self.summary())  # one line, with the count
        elif self.skipped:
            log.info("%s %d: %s", what, self.passes, self.summary())
        return new

    def __getitem__(self, i: int) -> Sample:
        n = len(self._keep)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        for step in range(n):
            k = (i + step) % n
            row = int(self._keep[k])
            if row in self._known_bad:
                continue
            try:
                image = self._load(row)
            except Bad as e:
                if self.on_error == "raise":
                    raise self._error(row, e) from None
                # Keep the pass going with the next sample; the pass report names this one.
                ident = e.ident or self._rec.idents[row]
                self._known_bad.add(row)
                self._log.add(ident, e.reason)
                if not in_worker():
                    log.debug("%s: skipping %s (%s)", self.source, ident, e.reason)
                continue
            meta = {"id": self._rec.idents[row], "source": self.source, "index": k}
            labels = self._rec.labels
            label = None if labels is None else int(labels[row])
            return Sample(image=image, captions=self._rec.caption_list(row), label=label, meta=meta)
        raise ClipforgeError(f"{self.source}: none of its {n:,} images can be read")


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
    validate: bool = False,
    progress: bool | None = None,
    label_key: str | None = None,
) -> UserDataset:
    """Open a user's image-text data, detecting its format (see the module docstring).

    Reads file lists and captions only; images are decoded on access (`validate=True`: all of them
    once, now). `root` is the folder relative image paths start from (default: the metadata file's
    folder, the image folder, or the dataset folder). `split` is used only by formats with splits.
    `label_key` names a class-label column / member / field: the dataset then has `classnames` and
    each sample a `label` (see "Labels" in the module docstring).
    """
    _check_on_error(on_error)
    if label_key is not None and (not isinstance(label_key, str) or not label_key.strip()):
        raise ClipforgeError(f"label_key must be a column name, got {label_key!r}")
    spec_s = os.fspath(spec)
    rec = Records(on_error, caption_sep, label_key)
    base_override = Path(root).expanduser() if root is not None else None
    name = Path(spec_s.rstrip("/")).name

    many = _many_files(spec_s)
    path = Path(spec_s).expanduser()
    if many is not None:
        kinds = {Path(f).suffix.lower() for f in many}
        base = base_override or Path(many[0]).parent
        if kinds == {".tar"}:
            shards.read_shards(many, caption_key, rec)
        elif kinds == {".parquet"}:
            tables.read_parquet(many, image_key, caption_key, base, rec)
        else:
            raise ClipforgeError(f"{spec_s}: a pattern must name only .tar or only .parquet files")
    elif not path.exists():
        raise ClipforgeError(f"dataset not found: {spec_s}")
    elif path.is_file():
        suffix = path.suffix.lower()
        base = base_override or path.parent
        if suffix in (".csv", ".tsv", ".jsonl"):
            fmt.read_table_file(path, image_key, caption_key, base, rec)
        elif suffix == ".tar":
            shards.read_shards([str(path)], caption_key, rec)
        elif suffix == ".parquet":
            tables.read_parquet([str(path)], image_key, caption_key, base, rec)
        else:
            raise ClipforgeError(
                f"{path}: unknown dataset format {suffix or '(no extension)'!r} "
                "(expected .csv, .tsv, .jsonl, .tar, .parquet or a folder)"
            )
    else:
        _open_folder(path, split, image_key, caption_key, base_override, rec)

    rec.finish()
    ds = UserDataset(name, spec_s, rec, on_error=on_error, skipped=rec.bad)
    if validate:
        ds.validate(progress)
    if not len(ds):
        raise ClipforgeError(f"{spec_s}: no usable samples" + (f" ({ds.summary()})" if ds.skipped else ""))
    if ds.skipped:
        log.warning("%s", ds.summary())
    return ds


def _open_folder(path: Path, split: str | None, image_key: str, caption_key: str, root: Path | None,
                 rec: Records) -> None:
    """Detect a folder's format and read it into `rec`."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file() or (
        path / "dataset_info.json"
    ).is_file():
        tables.read_hf(path, split, image_key, caption_key, root or path, rec)
        return
    has_meta = any((path / m).is_file() for m in METADATA_FILES)
    if split is not None and (path / split).is_dir() and not has_meta:
        path = path / split  # imagefolder layout with per-split subfolders
    for meta in METADATA_FILES:
        if (path / meta).is_file():
            fmt.read_table_file(path / meta, image_key, caption_key, root or path, rec)
            return
    tars = sorted(str(p) for p in path.glob("*.tar"))
    if tars:
        shards.read_shards(tars, caption_key, rec)
        return
    parquets = sorted(str(p) for p in path.glob("*.parquet"))
    if parquets:
        tables.read_parquet(parquets, image_key, caption_key, root or path, rec)
        return
    raise ClipforgeError(
        f"{path}: unknown dataset format (expected metadata.csv/metadata.jsonl, .tar shards, "
        ".parquet files or a datasets save_to_disk folder)"
    )
