"""DMU end to end (`clipforge moe ...`), its baselines, routing statistics and MoE costs, on a tiny CLIP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipforge.cli import main
from clipforge.cost import flops_per_sample
from clipforge.data.scenes import ScenesDataset
from clipforge.models.clip_moe.modeling_clip_moe import CLIPMoEModel
from clipforge.models.io import load, save
from clipforge.models.registry import build
from clipforge.moe.pack import expert_model, pack, upcycle
from clipforge.moe.routing import routing_stats

pytestmark = pytest.mark.slow  # end to end: the whole command on tiny models

DMU = ["--data", "scenes", "--scenes-size", "96", "--preset", "quick", "--eval-size", "quick"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "model"
    save(build("tiny", seed=0), path, provenance={"source": "test base"})
    return path


@pytest.fixture(scope="module")
def dmu_run(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dmu") / "run"
    assert main(["moe", "dmu", "--base", str(base), "--out", str(out), *DMU, "--keep-stages"]) == 0
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load(path).state_dict()


def test_dmu_writes_a_moe_whose_only_change_after_packing_is_the_routers(dmu_run, base):
    model = load(dmu_run / "model")
    assert isinstance(model, CLIPMoEModel) and model.config.num_experts == 3 and model.config.top_k == 2
    packed, final = _state(dmu_run / "packed"), model.state_dict()
    changed = {k for k in final if not torch.equal(final[k], packed[k])}
    # the routers learn; the logit scale is fixed at 100 during router training, as in the released recipe
    assert changed and all(".mlp.router." in k for k in changed - {"logit_scale"})
    # expert e of every block is stage e's FFN; expert 0 is the base's
    base_sd = _state(base)
    stage1 = _state(dmu_run / "mcl" / "stage1" / "model")
    key = "vision_model.encoder.layers.1.mlp.{}fc1.weight"
    assert torch.equal(final[key.format("experts.0.")], base_sd[key.format("")])
    assert torch.equal(final[key.format("experts.1.")], stage1[key.format("")])
    assert not torch.equal(stage1[key.format("")], base_sd[key.format("")])
    prov = json.loads((dmu_run / "model" / "clipforge.json").read_text())
    assert prov["settings"]["method"] == "dmu" and prov["settings"]["router"]["schedule"]["steps"] == 4


def test_a_finished_dmu_keeps_the_clip_moe_only_and_rebuilds_stage_models_from_it(dmu_run, base, tmp_path):
    out = tmp_path / "lean"
    assert main(["moe", "dmu", "--base", str(base), "--out", str(out), *DMU]) == 0
    assert not (out / "packed").exists() and not (out / "checkpoints").exists()
    assert not any((out / "mcl" / f"stage{j}" / "model").exists() for j in range(3))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    kept = sum(p.stat().st_size for p in dmu_run.rglob("*") if p.is_file())
    assert size < kept / 2, (size, kept)
    final = load(out / "model")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), _state(dmu_run / "model").values()))
    rebuilt = expert_model(final, 1).state_dict()
    for key, value in _state(dmu_run / "mcl" / "stage1" / "model").items():
        if key != "logit_scale":  # stages train with a fixed one
            assert torch.equal(rebuilt[key], value), key
    ev = json.loads((out / "eval.json").read_text())
    assert ev["stages_mmvp"] == json.loads((dmu_run / "eval.json").read_text())["stages_mmvp"]


def test_dmu_reports_quality_cost_and_routing(dmu_run):
    ev = json.loads((dmu_run / "eval.json").read_text())
    for name in ("base", "clip_moe"):
        head, cost = ev["models"][name]["headline"], ev["models"][name]["cost"]
        assert 0 <= head["fmnist_acc1"] <= 1 and 0 <= head["t2i_r1"] <= head["t2i_r5"] <= 1
        assert "mmvp_binding" in head and cost["latency_image_ms"] > 0
    moe, dense = ev["models"]["clip_moe"]["cost"], ev["models"]["base"]["cost"]
    assert moe["params_stored"] > moe["params_active_per_token"] > dense["params_stored"]
    assert moe["flops_per_image"] > dense["flops_per_image"]
    assert set(ev["stages_mmvp"]) == {"stage0", "stage1", "stage2"}
    stats = json.loads((dmu_run / "routing.json").read_text())
    for tower in ("vision", "text"):
        share = torch.tensor(stats[tower]["share"])  # [k, blocks, E]
        assert share.shape == (2, 2, 3)
        assert torch.allclose(share.sum(-1), torch.ones(2, 2), atol=1e-5)
    for png in ("routing.png", "routers_loss.png", "stages_mmvp.png"):
        assert (dmu_run / "plots" / png).stat().st_size > 1000
    manifest = json.loads((dmu_run / "dmu.json").read_text())
    assert set(manifest["phases"]) >= {"mcl_stages", "pack", "routers", "evaluation"}


def test_dmu_rerun_skips_and_other_settings_are_refused(dmu_run, base, capsys):
    before = (dmu_run / "model" / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    assert main(["moe", "dmu", "--base", str(base), "--out", str(dmu_run), *DMU]) == 0
    assert (dmu_run / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert time.perf_counter() - t < 30
    capsys.readouterr()
    assert main(["moe", "dmu", "--base", str(base), "--out", str(dmu_run), *DMU, "--router-lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "router.schedule.lr" in err


def test_dmu_killed_and_rerun_ends_with_the_same_model(base, tmp_path):
    args = ["moe", "dmu", "--base", str(base), *DMU, "--stage-steps", "8", "--no-eval"]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    code = f"import sys; from clipforge.cli import main; sys.exit(main({[*args, '--out', str(out)]!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
        pointer = out / "mcl" / "stage2" / "train" / "checkpoints" / "latest"
        deadline = time.monotonic() + 180
        try:
            while not pointer.is_file():  # killed in the middle of the second MCL stage
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, "the worker never reached MCL stage 2"
                time.sleep(0.02)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "model").exists()
    assert main([*args, "--out", str(out)]) == 0
    a, b = _state(ref / "model"), _state(out / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_baselines_train_what_they_claim(base, tmp_path):
    assert main(["moe", "baseline", "direct-ft", "--base", str(base), "--data", "scenes", "--scenes-size", "64",
                 "--out", str(tmp_path / "ft"), "--steps", "3", "--batch", "32", "--lr", "1e-2"]) == 0
    b, ft = _state(base), _state(tmp_path / "ft" / "model")
    changed = {k for k in b if not torch.equal(b[k], ft[k])}
    assert changed and all(".mlp.fc" in k for k in changed - {"logit_scale"})

    assert main(["moe", "baseline", "sparse-upcycling", "--base", str(base), "--data", "scenes", "--scenes-size",
                 "64", "--out", str(tmp_path / "su"), "--steps", "3", "--batch", "32", "--lr", "1e-2",
                 "--experts", "3"]) == 0
    su0 = upcycle(str(base), num_experts=3, seed=0).state_dict()
    su = _state(tmp_path / "su" / "model")
    changed = {k for k in su if not torch.equal(su[k], su0[k])}
    assert any(".experts." in k for k in changed) and any(".router." in k for k in changed)
    assert all(".mlp." in k for k in changed - {"logit_scale"})

    assert main(["moe", "baseline", "without-mcl", "--base", str(base), "--finetuned", str(tmp_path / "ft"),
                 "--data", "scenes", "--scenes-size", "64", "--out", str(tmp_path / "wo"), "--steps", "2",
                 "--batch", "32"]) == 0
    wo = load(tmp_path / "wo" / "model")
    assert wo.config.num_experts == 2
    key = "text_model.encoder.layers.0.mlp.{}fc2.weight"
    assert torch.equal(wo.state_dict()[key.format("experts.1.")], ft[key.format("")])


def test_routing_stats_count_choices_and_skip_padding(base):
    model = pack([str(base)] * 3, top_k=2, seed=0)
    with torch.no_grad():
        for tower in model.moe_layers().values():
            for moe in tower:
                moe.router.weight.zero_()
                moe.router.weight[2].fill_(0.0)
                moe.router.weight[1, 0] = 50.0  # expert 1 wins where feature 0 > 0, else expert 2 or 0
    data = ScenesDataset(split="test", size=24, seed=1, image_size=model.config.vision_config.image_size)
    stats = routing_stats(model, data, batch_size=10)
    # reference: count by hand with the padding mask
    from clipforge.data.collate import Collator
    from clipforge.models.preprocess import transform_for
    from clipforge.moe.balance import text_token_mask

    batch = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings,
                     caption="first")([data[i] for i in range(24)])
    out = model.get_text_features(input_ids=batch["input_ids"], output_router_logits=True)
    mask = text_token_mask(batch["input_ids"]).reshape(-1)
    first = out.router_logits[0].topk(2, dim=-1).indices[:, 0][mask]
    ref = torch.bincount(first, minlength=3).float() / mask.sum()
    assert torch.allclose(torch.tensor(stats["text"]["share"][0][0]), ref, atol=1e-6)
    assert stats["text"]["tokens"] == int(mask.sum())


def test_moe_flops_add_the_extra_experts_and_the_router(base):
    dense = load(base)
    moe = pack([str(base)] * 4, top_k=2, seed=0)
    d, m = dense.config.vision_config.hidden_size, dense.config.vision_config.intermediate_size
    n = dense.config.vision_config.num_hidden_layers
    t = (dense.config.vision_config.image_size // dense.config.vision_config.patch_size) ** 2 + 1
    extra = n * t * (4 * d * m + 2 * d * 4)
    assert flops_per_sample(moe, "image") - flops_per_sample(dense, "image") == extra
    # parameters a token passes through: the generic count agrees with the MoE model's own
    from clipforge.cost import active_params
    from clipforge.models.clip_moe.modeling_clip_moe import moe_param_counts

    assert active_params(moe) == moe_param_counts(moe)["active_per_token"] < sum(p.numel() for p in moe.parameters())
    assert active_params(dense) == sum(p.numel() for p in dense.parameters())


def test_stats_command(dmu_run, tmp_path, capsys):
    assert main(["moe", "stats", "--model", str(dmu_run), "--out", str(tmp_path), "--samples", "16"]) == 0
    assert (tmp_path / "routing.png").is_file() and json.loads((tmp_path / "cost.json").read_text())["params_stored"]
    assert main(["moe", "stats", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_dmu_prints_its_disk_need_and_refuses_a_disk_short_of_it(base, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    from clipforge.models.registry import make_config
    from clipforge.moe.dmu import DMUConfig, disk_need

    cfg = make_config("tiny")
    params = sum(p.numel() for p in build("tiny").parameters())
    ffn = sum(p.numel() for n, p in build("tiny").named_parameters() if ".mlp." in n)
    need = disk_need(cfg, DMUConfig())  # 4 experts: the CLIP-MoE stores 3 more FFN sets
    assert need["model"] == need["end"] == 4 * (params + 3 * ffn)
    assert need["peak"] == 4 * max(3 * params + 2 * (params + 2 * ffn), 4 * params + 3 * (params + 3 * ffn))
    assert disk_need(cfg, DMUConfig(), keep_stages=True)["end"] == need["end"] + 4 * 4 * params

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "short"
    capsys.readouterr()
    assert main(["moe", "dmu", "--base", str(base), "--out", str(out), *DMU]) == 2
    captured = capsys.readouterr()
    assert "at the peak" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "0.0 GB free, the run needs about" in err[0] and not out.exists()


def test_preset_epoch_sizes_dmu_to_the_data_and_keeps_the_base_temperature(base, tmp_path, capsys):
    """`--preset epoch` (clipforge.moe.recipe): clusters sized to --data at the stage batch, stages and routers
    of one epoch, the logit scale fixed at the base's learned value; flags still override it."""
    out = tmp_path / "epoch"
    assert main(["moe", "dmu", "--base", str(base), "--out", str(out), "--data", "scenes", "--scenes-size", "64",
                 "--preset", "epoch", "--stage-batch-size", "8", "--experts", "3", "--no-eval"]) == 0
    printed = capsys.readouterr().out
    scale = float(load(base).logit_scale.detach().exp())
    assert "MCL stages of one epoch, 2×1 clusters each" in printed, printed  # round((64 / 16) ** (1 / 2)) = 2
    assert f"logit scale fixed at {scale:.1f}" in printed
    prov = json.loads((out / "model" / "clipforge.json").read_text())
    mcl, router = prov["settings"]["dmu"]["mcl"], prov["settings"]["router"]["schedule"]
    assert (mcl["k_img"], mcl["k_txt"], mcl["num_experts"]) == (2, 1, 3)
    assert mcl["schedule"]["steps"] is None and mcl["schedule"]["fixed_logit_scale"] == pytest.approx(scale)
    assert prov["schedule"]["steps"] == 64 // 8 and router["fixed_logit_scale"] == pytest.approx(scale)
