"""Ship the CLIP-MoE's modelling code inside every saved directory, as transformers does for custom models.

A directory clipforge writes then loads with plain transformers where clipforge is not installed:

    AutoModel.from_pretrained(dir, trust_remote_code=True)

`config.json` gets an `auto_map` naming the shipped files; without `trust_remote_code=True`,
transformers itself says that the directory holds custom code and which flag loads it. The copies are
this package's own `configuration_clip_moe.py`, `moe_layer.py`, `modeling_clip_moe.py` (the names the
saved directory uses) and `models/captions.py`, with the one import that reaches outside the folder pointed
at its copy; those modules import nothing else of clipforge (tested), so the copy is the code clipforge
runs, not a second implementation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_SRC = Path(__file__).resolve().parent
# source file → (name in the saved directory, the import line that reaches it from a sibling)
SHIPPED = {
    _SRC / "configuration_clip_moe.py": ("configuration_clip_moe.py", None),
    _SRC / "moe_layer.py": ("moe_layer.py", None),
    _SRC.parent / "captions.py": ("captions.py", "from ..captions import"),
    _SRC / "modeling_clip_moe.py": ("modeling_clip_moe.py", None),
}
AUTO_MAP = {"AutoConfig": "configuration_clip_moe.CLIPMoEConfig", "AutoModel": "modeling_clip_moe.CLIPMoEModel"}
_RELATIVE = re.compile(r"^\s*from\s+\.+[\w.]*\s+import", re.MULTILINE)


def shipped_source(path: Path) -> str:
    """The text of one shipped file, its relative imports pointed at the other shipped files."""
    text = path.read_text(encoding="utf-8")
    for _, (name, line) in SHIPPED.items():
        if line is not None:
            text = text.replace(line, f"from .{name[:-3]} import")
    shipped = {f"from .{name[:-3]} import" for name, _ in SHIPPED.values()}
    stray = [m.group(0).strip() for m in _RELATIVE.finditer(text) if m.group(0).strip() not in shipped]
    if stray:  # a new import of clipforge would break loading without clipforge: fail at save, loudly
        raise RuntimeError(f"{path}: `{stray[0]}` reaches outside the shipped CLIP-MoE files")
    return text


def ship_code(model_dir: str | Path) -> None:
    """Copy the modelling code into `model_dir` and point its `config.json` at it (`auto_map`)."""
    model_dir = Path(model_dir)
    for src, (name, _) in SHIPPED.items():
        (model_dir / name).write_text(shipped_source(src), encoding="utf-8")
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["auto_map"] = dict(AUTO_MAP)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
