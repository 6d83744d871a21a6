"""Write docs/scenes_grid.png (sample scenes with captions) and docs/scenes_pairs.png (one
diagnostic pair per type). Usage: python scripts/make_scenes_figures.py [--seed N]"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipforge.data.scenes import save_grid, save_pairs_grid

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    DOCS.mkdir(exist_ok=True)
    save_grid(str(DOCS / "scenes_grid.png"), n=20, seed=args.seed)
    save_pairs_grid(str(DOCS / "scenes_pairs.png"), seed=args.seed)
    print(f"wrote {DOCS / 'scenes_grid.png'} and {DOCS / 'scenes_pairs.png'}")


if __name__ == "__main__":
    main()
