"""The width-gap family: nine descendants narrower than the ancestry, and the learngene's shape.

The learngene literature's regime is a width gap: TLEG and its successors distil into descendants that
cannot simply copy the ancestry's blocks. So every descendant here (and the learngene itself) is about
`fraction` (two thirds) of the ancestry's width in each tower, rounded to whole heads of the ancestry's
head size (heads keep their size, as across the ViT family; the MLP keeps its ratio: `widths.scaled`):
the demo ancestry's vision 128 (4 heads of 32) gives 96 (3 heads), its text 96 (3 heads) gives 64
(2 heads); a ViT-B/32 CLIP's 768 / 512 (heads of 64) gives 512 / 320.

The family is every kind (CLIP, vision-only, text-only) at every depth: `Member("clip", 4)` is a CLIP
with both towers 4 blocks deep, `Member("vision", 2)` a 2-block vision tower with its projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipforge.errors import ClipforgeError
from clipforge.learngene import LearngeneConfig
from clipforge.learngene.widths import fraction_widths, narrow_width  # noqa: F401 (narrow_width: re-exported)
from clipforge.models.registry import tower_config

KINDS = ("clip", "vision", "text")
TOWERS = ("vision", "text")


@dataclass(frozen=True, order=True)
class Member:
    """One descendant of the family: its kind and its depth (both towers of a CLIP)."""

    kind: str
    depth: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.depth < 1:
            raise ClipforgeError(f"family member needs a kind in {KINDS} and a depth >= 1, got {self}")

    @property
    def name(self) -> str:
        return f"{self.kind}-d{self.depth}"

    @property
    def towers(self) -> tuple[str, ...]:
        return TOWERS if self.kind == "clip" else (self.kind,)

    @classmethod
    def parse(cls, name: str) -> Member:
        """`clip-d4` → Member("clip", 4)."""
        kind, _, depth = name.partition("-d")
        return cls(kind, int(depth))


def family_widths(ancestry_config: Any, fraction: float) -> dict[str, int]:
    """{tower: width} of the learngene and every descendant (`widths.fraction_widths`)."""
    return fraction_widths(ancestry_config, fraction)


def family(depths: tuple[int, ...] | list[int], kinds: tuple[str, ...] = KINDS) -> list[Member]:
    """Every kind at every depth, kind by kind (CLIPs first)."""
    return [Member(k, d) for k in kinds for d in depths]


def learngene_shape(ancestry_config: Any, fraction: float, **choices: Any) -> LearngeneConfig:
    """The learngene's config at the family's widths (heads and MLP by `widths.scaled`), plus `choices`."""
    widths = family_widths(ancestry_config, fraction)
    return LearngeneConfig.from_ancestry(ancestry_config, vision_width=widths["vision"], text_width=widths["text"],
                                         **choices)


def member_config(shape: LearngeneConfig, member: Member) -> Any:
    """The HF config of `member` (`CLIPConfig`, `CLIPVisionConfig` or `CLIPTextConfig`) at the family's widths."""
    return tower_config(shape.clip_config(member.depth, member.depth), member.kind)


def describe(shape: LearngeneConfig) -> dict[str, dict[str, int]]:
    """{tower: {width, heads, mlp}} of the family's blocks."""
    return {t: shape.tower_shape(t).to_dict() for t in TOWERS}
