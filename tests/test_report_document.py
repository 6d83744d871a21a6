"""Report rendering (Markdown + self-contained HTML) and qualitative retrieval examples."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from clipforge.data.scenes import ScenesDataset  # noqa: E402
from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.models.registry import build  # noqa: E402
from clipforge.report.document import Report, format_cell  # noqa: E402
from clipforge.report.samples import plot_retrieval_examples, retrieval_examples  # noqa: E402


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    fig.savefig(path, dpi=40)
    plt.close(fig)
    return path


def test_report_markdown_and_html(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inside = _png(out / "plots" / "x.png")
    outside = _png(tmp_path / "elsewhere" / "y.png")
    rep = Report("Demo <b>report</b>")
    rep.heading("Results").paragraph("See **bold**, `a<b>` and [docs](https://example.org?a=1&b=2).")
    rep.table(["model", "acc", "params", "note"], [["tiny", 0.51234, 1234567, "0.5 ± 0.1"],
                                                   ["small", 0.7, 42, "<script>alert(1)</script>"]],
              caption="accuracy")
    rep.image(inside, "loss curve").image(outside, "outside image")
    rep.heading("Results")  # a repeated title gets its own anchor
    rep.bullets(["one <script>x</script>", "[bad](javascript:alert(1))"]).code("print('<hi>')", lang="python")
    md_path, html_path = rep.write(out)

    assert (md_path, html_path) == (out / "report.md", out / "report.html")
    md, page = md_path.read_text(), html_path.read_text()
    assert "](plots/x.png)" in md and "](assets/y.png)" in md and (out / "assets" / "y.png").is_file()
    assert "| model | acc | params | note |" in md and "|---|---:|---:|---|" in md
    assert "0.512" in md and "1,234,567" in md and "<script>" not in md and "javascript" not in md

    assert page.count("data:image/png;base64,") == 2
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#", "https://")), attr
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<strong>bold</strong>" in page and "<code>a&lt;b&gt;</code>" in page
    assert 'href="https://example.org?a=1&amp;b=2"' in page
    assert "<li>bad" in page and "javascript" not in page  # unsafe link: text kept, href dropped
    ids = set(re.findall(r'id="([^"]+)"', page))
    toc = re.findall(r'href="#([^"]+)"', page)
    assert toc == ["results", "results-1"] and set(toc) <= ids
    assert '<td class="num">1,234,567</td>' in page
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]

    with pytest.raises(ClipforgeError, match="missing.png"):
        Report("r").image(tmp_path / "missing.png", "nope")
    gone = _png(tmp_path / "gone.png")
    rep2 = Report("r").image(gone, "gone")
    gone.unlink()
    with pytest.raises(ClipforgeError, match="gone.png"):
        rep2.write(tmp_path / "out2")
    assert not (tmp_path / "out2" / "report.md").exists()
    assert (format_cell(True), format_cell(None), format_cell(2.0), format_cell("x")) == ("True", "", "2.000", "x")


def test_retrieval_examples(tmp_path: Path) -> None:
    models = {f"seed{s}": build("tiny", seed=s) for s in (0, 1)}
    size = models["seed0"].config.vision_config.image_size
    ds = ScenesDataset(split="test", size=32, seed=1, image_size=size)
    ex = retrieval_examples(models, ds, n_images=3, top=2, seed=0)

    assert ex["models"] == ["seed0", "seed1"] and len(ex["images"]) == 3
    assert ex == retrieval_examples(models, ds, n_images=3, top=2, seed=0)  # seeded
    for entry in ex["images"]:
        assert entry["caption"] == ds[entry["index"]].captions[0]
        for name in models:
            hits = entry[name]
            assert len(hits) == 2
            assert all(set(h) == {"caption", "score", "correct"} for h in hits)
            assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
            assert all(h["correct"] == (h["caption"] == entry["caption"]) for h in hits)

    png = plot_retrieval_examples(ex, tmp_path / "plots" / "retrieval.png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "plots").glob(".*"))


def test_image_labels_are_cut_to_four_lines() -> None:
    from clipforge.report.samples import _short_label

    short = "a red circle"
    assert _short_label(short) == short
    long = " ".join(["a small striped diagonal green cross"] * 6)
    label = _short_label(long)
    assert len(label.splitlines()) == 4 and label.endswith("…")
    assert all(len(line) <= 32 for line in label.splitlines())
