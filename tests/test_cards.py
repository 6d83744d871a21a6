"""What a saved directory tells others: card front matter the hub reads, and no machine's absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

from clipforge.files import portable, portable_path
from clipforge.models.io import read_provenance, save
from clipforge.models.registry import build


def _all_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*")
                     if p.is_file() and p.suffix in (".json", ".md", ".txt", ".py"))


def test_a_saved_model_names_its_base_license_data_and_holds_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "outside" / "my base"
    base.mkdir(parents=True)
    (base / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# base\n")
    csv = Path("/srv/data/pairs.csv")  # outside the working and home directories
    out = tmp_path / "runs" / "m"
    save(build("tiny"), out, provenance={"source": "test", "base": str(base.resolve()), "data": [str(csv), "scenes"],
                                         "settings": {"nested": [str(tmp_path / "runs" / "x")]}})
    text = _all_text(out)
    for absolute in (str(tmp_path), str(base.resolve()), str(csv), os.path.expanduser("~") + "/"):
        assert absolute not in text, absolute
    card = (out / "README.md").read_text()
    header = card.split("\n---\n", 1)[0]
    assert "pipeline_tag: zero-shot-image-classification" in header and "license: mit" in header
    assert 'base_model: "outside/my base"' in header and 'datasets: ["pairs.csv", "scenes"]' in header
    prov = read_provenance(out)
    assert prov["base"] == "outside/my base" and prov["data"] == ["pairs.csv", "scenes"]
    assert prov["settings"]["nested"] == ["runs/x"]


def test_portable_paths():
    home = Path.home()
    assert portable_path(home / ".cache" / "clipforge" / "anc") == str(Path("~") / ".cache" / "clipforge" / "anc")
    assert portable_path(Path.cwd() / "runs" / "a") == "runs/a"
    assert portable_path("relative/as/given") == "relative/as/given"
    assert portable({"a": ["/nowhere/x.csv", 3, "plain words / slash"]}) == {"a": ["x.csv", 3, "plain words / slash"]}


def test_tower_cards_name_their_pipeline(tmp_path):
    save(build("tiny", kind="vision"), tmp_path / "v")
    assert "pipeline_tag: image-feature-extraction" in (tmp_path / "v" / "README.md").read_text()


def test_the_demo_report_shows_no_absolute_cache_path(tmp_path, monkeypatch):
    from clipforge.demo.ancestry import shown_cache_path as shown_path

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    assert shown_path(tmp_path / "cache" / "ancestry" / "model") == "$CLIPFORGE_CACHE/ancestry/model"
    monkeypatch.delenv("CLIPFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "xdg" / "clipforge" / "ancestry") == "xdg/clipforge/ancestry"
    assert shown_path("/elsewhere/ancestry") == "ancestry"
