"""`clipforge moe dmu` killed anywhere and rerun ends with the model of an uninterrupted run, bit for bit.

Each case kills a subprocess at one point (`os._exit(137)`, as abrupt as SIGKILL but at a known place)
through a small wrapper that patches the hook and then runs the CLI, reruns the same command in a fresh
process, and compares every tensor of `OUT/model/model.safetensors` with the uninterrupted run's.

The base is the tiny CLIP with 16 px images in one patch (2 vision tokens per image) and router batches
of 4, in fp32 (`--amp off`): routing that small sends exactly one token to some expert, whose FFN then
runs as a matrix-vector product. On the CPU that kernel rounds differently depending on the memory
alignment of the weights, so these runs show it when a resumed run trains the packed model loaded from
disk (views into the safetensors file) where the uninterrupted run trained it as built in memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.models.io import save
from clipforge.models.registry import build, get_config_dict

pytestmark = pytest.mark.slow

KILLED = 137
TIMEOUT = 300

# Where to die (CLIPFORGE_TEST_KILL): "router:N" at the N-th router step; "mcl:J:S" right after MCL stage J
# wrote its step-S checkpoint; "packed" right after OUT/packed is saved; "packing" in the middle of saving
# it (weights written to the temporary directory, the rest not yet).
WRAPPER = textwrap.dedent("""
    import os
    import sys
    from pathlib import Path

    kill = os.environ["CLIPFORGE_TEST_KILL"]

    def die():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)

    if kill.startswith("router:"):
        from clipforge.moe import balance

        n, calls, step = int(kill.split(":")[1]), [0], balance.RouterStep.__call__

        def counted(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                die()
            return step(self, *args, **kwargs)

        balance.RouterStep.__call__ = counted
    elif kill.startswith("mcl:"):
        from clipforge.train import loop

        _, stage, at = kill.split(":")
        save_checkpoint = loop.save_checkpoint

        def saved(state, ckpt_dir, step, *args, **kwargs):
            path = save_checkpoint(state, ckpt_dir, step, *args, **kwargs)
            if f"stage{stage}" in Path(ckpt_dir).parts and step == int(at):
                die()
            return path

        loop.save_checkpoint = saved
    elif kill in ("packed", "packing"):
        from clipforge.models import io

        save = io.save

        def saving(model, out_dir, *args, **kwargs):
            if Path(out_dir).name != "packed":
                return save(model, out_dir, *args, **kwargs)
            if kill == "packing":
                write = model.save_pretrained

                def write_then_die(*a, **k):
                    write(*a, **k)
                    die()

                model.save_pretrained = write_then_die
            save(model, out_dir, *args, **kwargs)
            die()

        io.save = saving
    else:
        raise SystemExit(f"unknown kill point {kill!r}")

    from clipforge.cli import main

    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dmu_resume")
    spec = get_config_dict("tiny")
    spec["vision_config"].update(image_size=16, patch_size=16)
    save(build(spec, seed=0), root / "base", provenance={"source": "test base"})
    (root / "kill.py").write_text(WRAPPER)
    return root


def _args(work: Path, out: Path) -> list[str]:
    return ["moe", "dmu", "--base", str(work / "base"), "--out", str(out), "--data", "scenes", "--scenes-size", "64",
            "--preset", "quick", "--router-batch", "4", "--amp", "off", "--workers", "0", "--no-eval"]


def _env(**extra: str) -> dict[str, str]:
    # One thread in every process: the runs compared must use the same kernels.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _run(cmd: list[str], log: Path, **env: str) -> int:
    with open(log, "wb") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(**env), timeout=TIMEOUT).returncode


def _cli(work: Path, out: Path, log: Path) -> int:
    code = "import sys; from clipforge.cli import main; sys.exit(main(sys.argv[1:]))"
    return _run([sys.executable, "-c", code, *_args(work, out)], log)


@pytest.fixture(scope="module")
def reference(work) -> dict[str, torch.Tensor]:
    out = work / "uninterrupted"
    assert _cli(work, out, work / "uninterrupted.log") == 0, (work / "uninterrupted.log").read_text()
    return load_file(out / "model" / "model.safetensors")


@pytest.mark.parametrize("kill", ["router:1", "router:3", "mcl:2:2", "packed", "packing"])
def test_dmu_killed_then_rerun_ends_bit_identical(work, reference, kill):
    out = work / f"killed_{kill.replace(':', '_')}"
    killed_log, rerun_log = work / f"{out.name}.killed.log", work / f"{out.name}.rerun.log"
    # The killed run checkpoints every step; the rerun keeps the default (wall time) cadence and still resumes:
    # the cadence is an execution option, not a setting.
    code = _run([sys.executable, str(work / "kill.py"), *_args(work, out), "--save-every", "1"], killed_log,
                CLIPFORGE_TEST_KILL=kill)
    assert code == KILLED, f"the run never reached the kill point {kill}:\n{killed_log.read_text()[-3000:]}"
    assert not (out / "model").exists()
    assert _cli(work, out, rerun_log) == 0, rerun_log.read_text()[-3000:]

    resumed = load_file(out / "model" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    differ = {k: (resumed[k].double() - reference[k].double()).abs().max().item() for k in reference
              if resumed[k].dtype != reference[k].dtype or not torch.equal(resumed[k], reference[k])}
    assert not differ, f"killed at {kill}, rerun: {len(differ)} tensors differ, max abs diff " \
                       f"{max(differ.values()):.3g} ({', '.join(sorted(differ)[:4])})"
