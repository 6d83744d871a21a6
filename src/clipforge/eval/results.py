"""Writing evaluation results to disk (the atomic JSON writer lives in `clipforge.files`)."""

from __future__ import annotations

from ..files import write_json

__all__ = ["write_json"]
