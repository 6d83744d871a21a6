"""WebDataset shards for `open_dataset`: each uncompressed tar indexed once (member offsets, captions,
labels) so samples can be read in any order. `clipforge.data.webdataset` streams shards instead."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError
from . import user_labels as labels
from .user_formats import IMAGE_EXTS, Records

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
            label = None
            if rec.label_key is not None:
                label = labels.member_label(members, rec.label_key, read)
                rec.labelled += label is not None
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                rec.reject(f"{name}:{key}", where, "missing (no " + "/".join(IMAGE_EXTS) + " member)")
                continue
            rec.add(f"{name}:{key}.{ext}", src, 0, caption, members[ext], label=label)
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
    if rec.label_key is not None:
        key = rec.label_key
        rec.label_where = f"{shards[0]}: label {key!r}"
        if seen and not rec.labelled:
            raise ClipforgeError(
                f"{shards[0]}: no label {key!r}: no {key!r} member and no {key!r} field in 'json' "
                f"(members: {', '.join(sorted(seen))}); choose one with --label-key (label_key in Python)"
            )
        if not captioned:
            rec.no_captions = f"no {caption_key!r} or 'txt' member or 'json' field in {shards[0]}"
        return
    if seen and not captioned:
        raise ClipforgeError(
            f"{shards[0]}: no caption: no {caption_key!r} or 'txt' member and no {caption_key!r} "
            f"field in 'json' (extensions: {', '.join(sorted(seen))}); choose one with --caption-key "
            "(caption_key in Python)"
        )
