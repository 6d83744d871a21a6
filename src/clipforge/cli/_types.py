"""argparse `type=` converters shared by the CLI's flags.

`finite_float` is defined in `clipforge.schedule` (the library generates the schedule flags with it,
and the library never imports the CLI); it is re-exported here for the CLI's hand-written flags.
"""

from __future__ import annotations

from ..schedule import finite_float

__all__ = ["finite_float"]
