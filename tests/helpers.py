"""Small shared test fixtures: seeded inputs for tiny models."""

from __future__ import annotations

import torch

from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID


def fake_batch(n: int = 4, image_size: int = 32, context: int = 16, seed: int = 0, channels: int = 3):
    """Random pixels and token ids shaped like real ones: bos, words, eos, zero padding."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, channels, image_size, image_size, generator=g)
    ids = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, context - 1, (1,), generator=g))
        ids[i, 0] = BOS_TOKEN_ID
        ids[i, 1 : 1 + length] = torch.randint(1, 49000, (length,), generator=g)
        ids[i, 1 + length] = EOS_TOKEN_ID
    return pixels, ids


class logs_warning:
    """Context: asserts that clipforge logged a WARNING matching `match` (a regex) inside the block;
    `.messages` holds every warning it logged. `match=None` with `expect=False` asserts there was none."""

    def __init__(self, match: str | None = None, expect: bool = True) -> None:
        import logging

        self.match, self.expect, self.messages = match, expect, []
        self._logger = logging.getLogger("clipforge")
        outer = self

        class _Grab(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.levelno >= logging.WARNING:
                    outer.messages.append(record.getMessage())

        self._handler = _Grab()

    def __enter__(self) -> logs_warning:
        self._logger.addHandler(self._handler)
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        import re

        self._logger.removeHandler(self._handler)
        if exc_type is None:
            if not self.expect:
                assert not self.messages, self.messages
            else:
                assert any(self.match is None or re.search(self.match, m) for m in self.messages), \
                    f"no warning matching {self.match!r} among {self.messages}"
        return False


def unequal_spec() -> dict:
    """A tiny CLIP whose towers differ in width and depth, as real ones do (vision 3 × 48, 3 heads; text 2 × 32,
    2 heads; both heads 16 wide), as a registry spec for `registry.build`."""
    import copy

    from clipforge.models.registry import get_config_dict

    spec = copy.deepcopy(get_config_dict("tiny"))
    spec.pop("description", None)
    spec["vision_config"].update(hidden_size=48, num_attention_heads=3, intermediate_size=96, num_hidden_layers=3)
    return spec
