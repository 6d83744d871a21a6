"""WebDataset shards streamed: read front to back, shuffled with a buffer, split over ranks and workers.

`open_dataset` indexes uncompressed shards for random access; `WebDatasetStream` never seeks, so it
reads compressed shards too and starts at once however many shards there are. Every epoch each
sample goes to exactly one (rank, DataLoader worker) "slot":

* "shard" split: the epoch's shard order (the same on every rank, drawn from `seed` and the epoch)
  dealt round-robin to the slots: each shard is read by one slot;
* "sample" split: every slot reads every shard and keeps every `slots`-th sample;
* "auto" (default): "shard" when the shards divide evenly over the slots, else "sample".

Within a slot, samples pass through a shuffle buffer (`shuffle_buffer` samples of raw bytes;
images are decoded when they leave it). Bad samples follow `on_error` as in `open_dataset`; the
skipped ones are reported by `end_pass()` (a `reporting` loader calls it). So does a shard that stops
before its tar end-of-archive marker (cut mid-file): "raise" stops with one line naming it, "skip"
counts the sample it ends in (the rest of the shard is lost) and reads on.

With `label_key` each sample's label is read from the member of that name (e.g. ``cls``) or that field
of its ``json``, and captions become optional. A stream cannot see every label before it starts, so
labels must be class indices, or names found in `classnames` when given (a string label without
`classnames` is a bad sample); `open_dataset` indexes shards and takes string labels too.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ClipforgeError
from .base import Sample
from .loader import SkipLog
from .tar_shards import _CUT, Truncated, _watched_headers
from .user_formats import IMAGE_EXTS, Bad, decode
from .user_labels import BadLabel, clean, member_label
from .user_shards import _WDS_KEY, caption_of

log = logging.getLogger("clipforge.data")

SPLITS = ("auto", "shard", "sample")


def shard_list(spec: str | os.PathLike[str]) -> list[str]:
    """The shards a spec names: a .tar file, a brace pattern, a glob, or a folder of .tar files."""
    from .user import _many_files

    s = os.fspath(spec)
    many = _many_files(s)
    if many is not None:
        return many
    p = Path(s).expanduser()
    if p.is_dir():
        found = sorted(str(x) for x in p.iterdir() if x.name.endswith((".tar", ".tar.gz", ".tgz")))
        if not found:
            raise ClipforgeError(f"{p}: no .tar shards in this folder")
        return found
    if not p.is_file():
        raise ClipforgeError(f"dataset not found: {s}")
    return [str(p)]


def _rank_world(recorded: tuple[int, int] | None) -> tuple[int, int]:
    """This process's (rank, world size): the process group's, else the one `recorded` in the main
    process (a worker holds no process group), else torchrun's environment."""
    from .. import distributed as D

    if D.is_initialized():
        return D.rank(), D.world_size()
    if recorded is not None:
        return recorded
    info = D.dist_info("cpu")
    return info.rank, info.world_size


def _open_stream(raw: Any, shard: str, info_class: type[tarfile.TarInfo], seen: dict[str, str]) -> tarfile.TarFile:
    """`raw` opened as a tar stream (any compression); a file that ends inside its first header is `Truncated`."""
    try:
        return tarfile.open(fileobj=raw, mode="r|*", tarinfo=info_class)
    except (tarfile.ReadError, EOFError, TypeError) as e:  # TypeError: tarfile on a gzip header cut short
        if seen["last"] == "short" or isinstance(e, (EOFError, TypeError)):
            raise Truncated(shard, None, 0) from None
        raise


def _groups(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of one shard's samples, in file order, reading it as a stream.

    A shard that stops before its end-of-archive marker (a truncated copy or download, a writer killed
    mid-shard) raises `Truncated` after its whole samples: the sample it ends in is never yielded, as
    the members it lost cannot be known.
    """
    info_class, seen = _watched_headers()
    key, members, complete = None, {}, 0
    try:
        with open(shard, "rb") as raw, _open_stream(raw, shard, info_class, seen) as tf:
            members_iter = iter(tf)
            while True:
                try:
                    m = next(members_iter, None)
                    if m is None:
                        break
                    match = _WDS_KEY.match(m.name) if m.isfile() else None
                    if not match:
                        continue
                    stem, ext = match.group(1), match.group(2)
                    if stem != key and key is not None:
                        yield key, members
                        complete += 1
                        members = {}
                    key = stem
                    f = tf.extractfile(m)
                    members[ext.lower()] = f.read() if f is not None else b""
                except (tarfile.ReadError, EOFError) as e:
                    if isinstance(e, tarfile.ReadError) and not _CUT.search(str(e)):
                        raise  # not a cut: e.g. invalid compressed data
                    raise Truncated(shard, key, complete) from None  # a member (or its header) cut short
    except FileNotFoundError:
        raise ClipforgeError(f"shard not found: {shard}") from None
    except tarfile.TarError as e:
        raise ClipforgeError(f"{shard}: not a tar shard ({e})") from None
    if seen["last"] != "end":  # tarfile stopped at a cut or unreadable header, not at the end marker
        raise Truncated(shard, key, complete, corrupt=seen["last"] == "invalid")
    if key is not None:
        yield key, members


def _initialized() -> bool:
    from .. import distributed as D

    return D.is_initialized()


class WebDatasetStream(IterableDataset):
    """Samples of WebDataset shards, streamed; call `set_epoch(e)` before each epoch for a new order."""

    def __init__(self, spec: str | os.PathLike[str], *, caption_key: str = "caption", shuffle_buffer: int = 1000,
                 seed: int = 0, on_error: str = "skip", split: str = "auto", label_key: str | None = None,
                 classnames: list[str] | None = None) -> None:
        if on_error not in ("skip", "raise"):
            raise ClipforgeError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if split not in SPLITS:
            raise ClipforgeError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if shuffle_buffer < 0:
            raise ClipforgeError(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        self.shards = shard_list(spec)
        self.name = Path(os.fspath(spec).rstrip("/")).name
        self.source = os.fspath(spec)
        self.caption_key, self.shuffle_buffer, self.seed = caption_key, int(shuffle_buffer), int(seed)
        self.on_error, self.split = on_error, split
        self.label_key = label_key
        self.classnames = list(classnames) if classnames is not None else None
        self._class_index = {c: i for i, c in enumerate(self.classnames or [])}
        self.epoch = 0
        self._dist = _rank_world(None) if _initialized() else None
        self.passes = 0
        self.skipped: list[tuple[str, str]] = []
        self._log = SkipLog()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration shuffles for (also records the rank layout for workers)."""
        self.epoch = int(epoch)
        if _initialized():
            self._dist = _rank_world(None)

    def plan(self, slot: int, slots: int) -> tuple[list[str], int | None]:
        """The shards slot `slot` of `slots` reads this epoch, and (sample split) which residue it keeps."""
        order = [self.shards[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))]
        mode = self.split
        if mode == "auto":
            mode = "shard" if len(order) % slots == 0 else "sample"
        if mode == "shard":
            if len(order) < slots:
                raise ClipforgeError(f"{self.source}: {len(order)} shards cannot feed {slots} rank×worker slots "
                                     "with split='shard'; use split='sample'")
            return order[slot::slots], None
        return order, slot

    def __iter__(self) -> Iterator[Sample]:
        rank, world = _rank_world(self._dist)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slots, slot = world * workers, rank * workers + worker
        shards, residue = self.plan(slot, slots)
        rng = np.random.default_rng([self.seed, self.epoch, slot, 1])
        buffer: list[tuple[str, dict[str, bytes]]] = []
        j = 0
        for shard in shards:
            name = Path(shard).name
            try:
                for key, members in _groups(shard):
                    j += 1
                    if residue is not None and (j - 1) % slots != residue:
                        continue
                    item = (f"{name}:{key}", members)
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(item)
                        continue
                    if buffer:  # shuffle_buffer 0: file order
                        k = int(rng.integers(len(buffer)))
                        buffer[k], item = item, buffer[k]
                    sample = self._sample(*item)
                    if sample is not None:
                        yield sample
            except Truncated as cut:
                if residue is None or j % slots == residue:  # one slot reports it (the cut one would be next)
                    self._truncated(cut)
        rng.shuffle(buffer)  # type: ignore[arg-type]
        for item in buffer:
            sample = self._sample(*item)
            if sample is not None:
                yield sample

    def _sample(self, ident: str, members: dict[str, bytes]) -> Sample | None:
        try:
            caption = caption_of(members, self.caption_key, lambda data: data)
        except UnicodeDecodeError:
            return self._bad(ident, "caption is not valid UTF-8")
        caps = [str(c).strip() for c in (caption if isinstance(caption, list) else [caption]) if c is not None]
        caps = [c for c in caps if c]
        if not caps and self.label_key is None:  # labelled data need no caption (zero-shot)
            return self._bad(ident, "no caption")
        label = None
        if self.label_key is not None:
            try:
                label = self._label(member_label(members, self.label_key, lambda data: data))
            except BadLabel as e:
                return self._bad(ident, str(e))
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            return self._bad(ident, "missing (no " + "/".join(IMAGE_EXTS) + " member)")
        try:
            image = decode(members[ext])
        except Bad as e:
            return self._bad(f"{ident}.{ext}", e.reason)
        return Sample(image=image, captions=caps, label=label, meta={"id": f"{ident}.{ext}", "source": self.source})

    def _label(self, raw: object) -> int:
        """A sample's class index: an integer label, or a name's position in `classnames`."""
        value = clean(raw)
        if value is None:
            raise BadLabel(f"no label {self.label_key!r}")
        if isinstance(value, str) and value in self._class_index:
            return self._class_index[value]
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise BadLabel(f"label {value!r} is not a class index" +
                           (" or one of the class names" if self.classnames else " (pass classnames)"))
        index = int(value)
        if self.classnames is not None and index >= len(self.classnames):
            raise BadLabel(f"label {index} is past the {len(self.classnames)} class names")
        return index

    def _truncated(self, cut: Truncated) -> None:
        """A shard that ends early: stop (one line naming it), or skip what it lost and count it."""
        if self.on_error == "raise":
            raise ClipforgeError(cut.message())
        self._log.add(cut.ident, cut.reason)

    def _bad(self, ident: str, reason: str) -> None:
        if self.on_error == "raise":
            raise ClipforgeError(f"bad sample {ident}: {reason}")
        self._log.add(ident, reason)
        return None

    def end_pass(self, complete: bool = True) -> list[tuple[str, str]]:
        """Collect what the pass skipped (also in workers); warn with the count and the first names."""
        self.passes += 1
        new = self._log.collect()
        self.skipped.extend(new)
        if new:
            shown = ", ".join(f"{i} ({r})" for i, r in new[:5])
            more = f", and {len(new) - 5:,} more" if len(new) > 5 else ""
            what = "pass" if complete else "partial pass"
            log.warning("%s: %s %d: skipped %s samples: %s%s", self.source, what, self.passes, f"{len(new):,}",
                        shown, more)
        return new
