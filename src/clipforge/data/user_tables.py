"""Parquet files and `datasets` save_to_disk folders for `open_dataset`: captions up front, image cells on demand."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from clipforge.errors import ClipforgeError

from .user_formats import Records, pick_columns
from .user_labels import classlabel_names


class ParquetTable:
    """Image cells of parquet files, read one row group at a time (a few groups cached)."""

    by_group = True  # rows are located by (file, row group, row)

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


class HFTable:
    """Image cells of a `datasets.Dataset` (memory-mapped; pickles by file reference)."""

    by_group = False  # rows are located by their row number

    def __init__(self, ds: Any, column: str, base: Path) -> None:
        self.ds, self.column, self.base = ds, column, base

    def cell(self, loc: int) -> Any:
        return self.ds[loc][self.column]


def read_parquet(files: list[str], image_key: str, caption_key: str, base: Path, rec: Records) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ClipforgeError("reading .parquet needs pyarrow: pip install 'clipforge[data]'") from e
    img_col = None
    rec.base = base
    for fi, file in enumerate(files):
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        img, cap, lab = pick_columns(names, image_key, caption_key, file, rec)
        if img_col is not None and img != img_col:
            raise ClipforgeError(f"{file}: image column {img!r} differs from {img_col!r} in {files[0]}")
        img_col = img
        captions = _column(pf, cap)
        labels = _column(pf, lab)
        if lab is not None and rec.label_names is None:
            rec.label_names = classlabel_names(pf.schema_arrow.metadata, lab)
        name = Path(file).name
        src = rec.source(name, "row")
        typ = pf.schema_arrow.field(img).type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            # Path strings: cheap to read all, and messages can name each file.
            rec.kind = "file"
            paths = pf.read(columns=[img]).column(0).to_pylist()
            for row, (p, c, y) in enumerate(zip(paths, captions, labels)):
                if not p:
                    rec.reject(f"{name}:row {row}", f"row {row} of {name}", f"no {img!r}")
                else:
                    rec.add(p, src, row, c, label=y)
            continue
        rec.kind = "table"
        if rec.table is None:
            rec.table = ParquetTable(list(files), img, base)
        row = 0
        for g in range(pf.num_row_groups):
            for r in range(pf.metadata.row_group(g).num_rows):
                rec.add(f"{name}:row {row}", src, row, captions[row], (fi, g, r), label=labels[row])
                row += 1


def _column(pf: Any, column: str | None) -> list[Any]:
    """A parquet column's values; all None for a column the table lacks (no captions)."""
    if column is None:
        return [None] * pf.metadata.num_rows
    return pf.read(columns=[column]).column(0).to_pylist()


def read_hf(folder: Path, split: str | None, image_key: str, caption_key: str, base: Path, rec: Records) -> None:
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
    img, cap, lab = pick_columns(names, image_key, caption_key, folder, rec)
    captions = list(obj[cap]) if cap is not None else [None] * len(obj)
    labels = list(obj[lab]) if lab is not None else [None] * len(obj)
    if lab is not None and isinstance(obj.features[lab], datasets.ClassLabel):
        rec.label_names = list(obj.features[lab].names)
    feat = obj.features[img]
    rec.base = base
    src = rec.source(folder.name, "row")
    if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
        rec.kind = "file"
        for row, (p, c, y) in enumerate(zip(list(obj[img]), captions, labels)):
            if not p:
                rec.reject(f"row {row}", f"row {row} of {folder.name}", f"no {img!r}")
            else:
                rec.add(p, src, row, c, label=y)
        return
    cells = obj.select_columns([img])
    if isinstance(feat, datasets.Image):
        cells = cells.cast_column(img, datasets.Image(decode=False))  # dicts, not decoded PIL
    rec.kind = "table"
    for row, (c, y) in enumerate(zip(captions, labels)):
        rec.add(f"row {row}", src, row, c, (row,), label=y)
    rec.table = HFTable(cells, img, base)
