"""The built-in `scenes` data: procedural captioned scenes that stress binding, relations and counting.

`dataset` (the dataset, the MMVP-style diagnostic pairs, figures), `spec` (what a scene holds and the
held-out combinations), `render` (drawing), `text` (the default captions), `styles` (the `alt` and
`dense` caption styles). The everyday names are re-exported here.
"""

from __future__ import annotations

from .dataset import (
                      PAIR_TYPES,
                      DiagnosticPair,
                      ScenesDataset,
                      count_captions,
                      diagnostic_pairs,
                      save_grid,
                      save_pairs_grid,
)
from .spec import HELD_OUT, SceneSpec
from .styles import CAPTION_STYLES

__all__ = ["CAPTION_STYLES", "HELD_OUT", "PAIR_TYPES", "DiagnosticPair", "SceneSpec", "ScenesDataset",
           "count_captions", "diagnostic_pairs", "save_grid", "save_pairs_grid"]
