"""`clipforge.files`: atomic writes that follow the umask and never leave a half-written output."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from clipforge.files import atomic_dir, atomic_path, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_files_and_directories_follow_the_umask(tmp_path, umask_022):
    assert _mode(write_text(tmp_path / "a.txt", "x")) == 0o644
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert _mode(tmp_path / "d") == 0o755
    os.umask(0o077)
    assert _mode(write_json(tmp_path / "b.json", {})) == 0o600


def test_a_failed_write_leaves_the_old_version_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "t.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "dir") as tmp:
        (tmp / "new").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "t.txt"]
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["keep"]


def test_write_json_converts_tensors_numpy_and_paths(tmp_path):
    path = write_json(tmp_path / "r.json", {"t": torch.tensor([1.5]), "n": np.float32(2.0), "p": tmp_path, "s": {2, 1}})
    assert json.loads(path.read_text()) == {"t": [1.5], "n": 2.0, "p": str(tmp_path), "s": [1, 2]}


@pytest.mark.slow
def test_help_and_import_run_no_benchmark_code():
    """`clipforge --help` builds every parser without executing benchmarks/*/run.py; `import clipforge` is light."""
    import subprocess
    import sys

    for code in ("import clipforge", "from clipforge.cli import build_parser; build_parser().format_help()"):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                             check=True)
        modules = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
        assert modules and not [m for m in modules if "bench" in m], [m for m in modules if "bench" in m]
        if code == "import clipforge":
            assert "transformers" not in modules and "torch" not in modules
