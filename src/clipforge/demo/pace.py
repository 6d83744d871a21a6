"""This machine's pace against the one the demo's estimates were measured on.

The phase estimates (`DemoConfig.estimates`) are wall times measured on one reference machine, and machines
sold as the same kind differ in speed (and in whether they train in bf16 or fp32). So before it prints an
estimate, the full demo times a few training steps of the ancestry architecture on a fixed batch of its
training data and scales every estimate by the ratio to `REFERENCE_STEP_S`, the same measurement taken on
the reference machine beside the estimates. It takes the median of eight steps, since a shared machine's
step time comes in bursts. The measurements behind the numbers: docs/results.md ("The demo").
"""

from __future__ import annotations

import time

import torch

# The calibration's median step (ancestry architecture, 256 samples of its training data, amp and attention
# "auto") on the reference machine, measured beside the estimates (docs/results.md, "The demo").
REFERENCE_STEP_S = 1.50  # session 16's from-nothing demo (docs/demo/demo.json "pace"), 2 threads, fp32
PACE_RANGE = (0.5, 3.0)


def step_seconds(arch: str = "ancestry", batch: int = 256, warmup: int = 1, steps: int = 8) -> float:
    """Median wall time of one training step (forward, backward, AdamW) of a random `arch` CLIP on `batch`
    samples of the ancestry's own training data, with the amp and attention kernel that `train()`'s "auto"
    settings pick here. Real captions, not full-length random ids: the alt-text batches pad to far fewer than
    the 32 positions, and how much that saves differs between kernels."""
    from ..data.collate import Collator
    from ..models.preprocess import transform_for
    from ..models.registry import build
    from ..train.fast import (
        adamw_kwargs,
        attention_kernel,
        longest_sequence,
        resolve_amp,
        resolve_attention,
    )
    from .ancestry import AncestryRecipe, training_data

    cpu = torch.device("cpu")
    bf16 = resolve_amp("auto", cpu) == "bf16"
    model = build(arch, seed=0).train()
    # the step as `train()` runs it: with the attention kernel "auto" picks for this model here
    kernel = resolve_attention("auto", "bf16" if bf16 else "off", cpu, longest_sequence(model))
    data = training_data(AncestryRecipe())
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:batch].tolist()
    with torch.random.fork_rng(devices=[]):
        inputs = Collator(transform_for(model.config), model.config.text_config.max_position_embeddings)(
            [data[i] for i in idx])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kwargs("auto", model.parameters()))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), attention_kernel(model, kernel):
            loss = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                         pixel_values=inputs["pixel_values"], return_loss=True).loss
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
