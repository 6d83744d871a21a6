"""This machine's pace against the one the demo's estimates were measured on.

The phase estimates (`DemoConfig.estimates`) are wall times measured on one 2-core machine. Machines sold
as the same kind are not the same speed: the ancestry's 1,000 steps took 31.7 min on 2 Xeon cores one day
and 46 min on 2 Xeon cores two days later. So before it prints an estimate, the full demo times a few training
steps of the ancestry architecture on a fixed synthetic batch (13 s measured) and scales every estimate by
the ratio to `REFERENCE_STEP_S`, the same measurement taken on the estimates' machine beside them.
"""

from __future__ import annotations

import time

import torch

# The calibration's median step (ancestry architecture, batch 256, amp "auto") on the machine and day the
# estimates were measured (2 Xeon cores with AMX, 2026-12-03, right after the from-nothing demo whose phases
# they are: `python -c "from clipforge.demo.pace import step_seconds; print(step_seconds())"` twice, alone,
# gave 2.60 and 2.88 s; that demo's ancestry trained at 2.6 s per step).
REFERENCE_STEP_S = 2.74
PACE_RANGE = (0.5, 3.0)


def step_seconds(arch: str = "ancestry", batch: int = 256, warmup: int = 1, steps: int = 3) -> float:
    """Median wall time of one training step (forward, backward, AdamW) of a random `arch` CLIP, with the
    amp and attention kernel that `train()`'s "auto" settings pick here."""
    from ..models.registry import build
    from ..train.fast import adamw_kwargs, longest_sequence, resolve_amp, resolve_attention

    cpu = torch.device("cpu")
    bf16 = resolve_amp("auto", cpu) == "bf16"
    model = build(arch, seed=0).train()
    # the step as `train()` runs it: with the attention kernel "auto" picks for this model here
    kernel = resolve_attention("auto", "bf16" if bf16 else "off", cpu, longest_sequence(model))
    model = build(arch, seed=0, attn_implementation=kernel).train()
    vision, text = model.config.vision_config, model.config.text_config
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=g)
    ids = torch.randint(0, text.vocab_size, (batch, text.max_position_embeddings), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kwargs("auto", model.parameters()))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def machine_pace(reference_s: float | None = None, **kw) -> tuple[float, float]:
    """(pace, measured step s): this machine's step time ÷ `reference_s` (default REFERENCE_STEP_S), clamped
    to PACE_RANGE; 1.0 when there is no reference."""
    reference_s = REFERENCE_STEP_S if reference_s is None else reference_s
    measured = step_seconds(**kw)
    if reference_s <= 0:
        return 1.0, measured
    lo, hi = PACE_RANGE
    return min(hi, max(lo, measured / reference_s)), measured
