"""docs/results.md and README.md's measured block are what scripts/make_results.py makes from the result files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("make_results", ROOT / "scripts" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_doc_reproduces_itself_byte_for_byte():
    m = _script()
    assert (ROOT / "docs" / "results.md").read_text(encoding="utf-8") == m.render_results()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert m.readme_with_block(readme) == readme


def test_every_verdict_in_the_docs_comes_from_a_result_file():
    m = _script()
    text = m.render_results()
    for name, *_ in m.BENCHMARKS:
        for line in m._verdicts(m._json(m.result_file(name)[0])):
            assert line in text
    assert m.demo_verdicts() and all(v in text for v in m.demo_verdicts())


def test_the_readme_is_a_map():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
