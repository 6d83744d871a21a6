"""One Markdown table renderer for everything clipforge writes as text: model cards, eval.md, reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    """A table cell: `|` escaped and newlines folded, so a value never breaks its row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(columns: Sequence[Any], rows: Sequence[Sequence[Any]], align: Sequence[bool] | None = None) -> list[str]:
    """The lines of a GitHub Markdown table; `align[j]` True right-aligns column j (numbers)."""
    rule = "|" + "|".join("---:" if a else "---" for a in (align or [False] * len(columns))) + "|"
    return ["| " + " | ".join(cell(c) for c in columns) + " |", rule,
            *["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]]
