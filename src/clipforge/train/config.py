"""Where `TrainConfig` used to live: it is defined beside `Schedule` in `clipforge.schedule` now."""

from ..schedule import TrainConfig  # noqa: F401  (until train/loop.py imports it from clipforge.schedule)
