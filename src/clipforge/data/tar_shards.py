"""Telling a tar shard that ends where it should from one cut short: used by the streamed WebDataset reader
and by the indexed one (`user_formats`), so both treat a truncated shard like a corrupt image."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path


class Truncated(Exception):
    """`_groups` reached the end of a shard that stops early (cut mid-file). `key` is the sample being
    read when the data ended (None: none was), `complete` how many whole samples came before it."""

    def __init__(self, shard: str, key: str | None, complete: int, corrupt: bool = False) -> None:
        self.shard, self.key, self.complete, self.corrupt = shard, key, complete, corrupt
        super().__init__(self.message())

    @property
    def ident(self) -> str:
        name = Path(self.shard).name
        return name if self.key is None else f"{name}:{self.key}"

    @property
    def reason(self) -> str:
        what = "corrupt shard (an unreadable tar header)" if self.corrupt else "truncated shard"
        where = "before its first sample" if self.key is None and not self.complete else (
            f"after {self.complete:,} samples" if self.key is None else "inside this sample")
        return f"{what}: it ends {where}; the rest of the shard is lost"

    def message(self) -> str:
        if self.corrupt:
            what = "is corrupt (an unreadable tar header where the next member should start)"
        elif self.key is None and not self.complete:
            what = "is truncated or not a tar file (it stops inside its first tar header)"
        else:
            what = "is truncated (the file stops mid-archive, without the tar end-of-archive marker)"
        where = "before its first sample" if self.key is None and not self.complete else (
            f"after {self.complete:,} complete samples" + ("" if self.key is None else f", inside sample {self.key}"))
        return f"shard {self.shard} {what}: it ends {where}; copy it again, or pass on_error='skip' (--on-error skip)"


# tarfile's words for data that stops early ("unexpected end of data", "truncated header").
_CUT = re.compile(r"end of data|truncated", re.IGNORECASE)


def _watched_headers() -> tuple[type[tarfile.TarInfo], dict[str, str]]:
    """A TarInfo class that notes what each header block it parses was, and the note it writes to.

    tarfile ends iteration quietly at a missing or unreadable header, as at the end-of-archive marker (a
    zero block): the note tells them apart. "end": a zero block; "short": the file ended within the
    block (or before it); "header": a member's header; "invalid": 512 bytes that are not a header.
    """
    seen = {"last": "short"}

    class WatchedInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf, encoding, errors):  # type: ignore[override]
            if len(buf) != tarfile.BLOCKSIZE:
                seen["last"] = "short"
            elif buf.count(tarfile.NUL) == tarfile.BLOCKSIZE:
                seen["last"] = "end"
            else:
                seen["last"] = "invalid"
                info = super().frombuf(buf, encoding, errors)
                seen["last"] = "header"
                return info
            return super().frombuf(buf, encoding, errors)

    return WatchedInfo, seen
