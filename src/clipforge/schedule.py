"""The one optimisation schedule every training command shares (docs/design.md, "One schedule config").

It lives outside `clipforge.train` so that the CLI can build its flags without importing torch.

`Schedule` holds what decides how a run optimises: steps, global batch, lr, weight decay, warm-up,
label smoothing, logit scale, AMP, seed, workers and the log interval. `TrainConfig` (the loop's config)
extends it; the method configs (`MCLConfig`, `RouterConfig`, `FinetuneConfig`, the ancestry recipe, the
learngene calls) embed one instead of restating the fields, and the CLI generates its flags from the
field metadata, so that every default and its help text live here or in the embedding config's default.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from .errors import ClipforgeError


def _f(default: Any, help: str, flag: str | None = None, cli: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


def finite_float(text: str) -> float:
    """argparse `type=` for a float flag: refuses non-numbers, nan and ±inf at parse time.

    Here, not in clipforge.cli, because the schedule flags are generated here and the library must
    not import the CLI; the CLI's hand-written float flags import it from here.
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # float() accepts "nan", "inf", "-infinity"...
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _problem(name: str, value: Any) -> str | None:
    """What is wrong with a schedule value (None: nothing); the caller names the field or the flag."""
    if value is None:
        return None if name in ("steps", "fixed_logit_scale", "grad_clip") else "must be set"
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
        return f"must be finite, got {value}"
    if name in ("steps", "warmup", "weight_decay", "num_workers") and value < 0:
        return f"must not be negative, got {value}"
    if name == "lr" and not value > 0:
        return f"must be positive, got {value}"
    if name in ("batch_size", "log_every") and value < 1 and not (name == "log_every" and value == 0):
        return f"must be at least 1, got {value}"
    if name == "label_smoothing" and not 0 <= value < 1:
        return f"must lie in [0, 1), got {value}"
    if name == "max_warmup_frac" and not 0 <= value <= 1:
        return f"must lie in [0, 1], got {value}"
    if name == "amp" and value not in ("auto", "bf16", "fp16", "off"):
        return f"must be auto, bf16, fp16 or off, got {value!r}"
    return None


@dataclass
class Schedule:
    """How a training run optimises. `batch_size` is global (split evenly over ranks)."""

    steps: int | None = _f(1000, "optimizer steps (None: one epoch where the method defines one)")
    batch_size: int = _f(256, "global batch size, split evenly over ranks")
    lr: float = _f(5e-4, "peak learning rate")
    weight_decay: float = _f(0.2, "AdamW weight decay")
    warmup: int = _f(0, "linear warm-up steps before the cosine decay")
    # A short run must leave warm-up: the warm-up is clamped to this share of the steps.
    max_warmup_frac: float = _f(1.0, "warm-up is at most this fraction of the steps", cli=False)
    label_smoothing: float = _f(0.0, "contrastive label smoothing")
    fixed_logit_scale: float | None = _f(None, "fix exp(logit_scale) to this value (e.g. 100); unset: learn it")
    amp: str = _f("auto", "autocast: auto (bf16 on CUDA and CPUs with native bf16, else off), bf16, fp16 "
                          "(CUDA GPUs without bf16, with loss scaling) or off")
    grad_checkpointing: bool = _f(False, "recompute activations in backward (less memory)", cli=False)
    seed: int = _f(0, "seed of initialisation, data order and RNG streams", cli=False)
    num_workers: int = _f(0, "DataLoader worker processes", cli=False)  # its own flag: cli/_workers.py
    log_every: int = _f(10, "log every N steps")
    # The optimiser [clipforge choices; the released CLIP-MoE code: betas (0.9, 0.999), eps 1e-8, no clipping,
    # decay on every tensor (moe.mcl.PAPER_SCHEDULE)].
    betas: tuple[float, float] = _f((0.9, 0.98), "AdamW betas", cli=False)
    eps: float = _f(1e-6, "AdamW eps", cli=False)
    grad_clip: float | None = _f(1.0, "clip the gradient norm to this (None: no clipping)", cli=False)
    decay_exclusions: bool = _f(True, "no weight decay on biases, norms, embeddings and the logit scale", cli=False)

    def __post_init__(self) -> None:
        for f in fields(Schedule):
            problem = _problem(f.name, getattr(self, f.name))
            if problem:
                raise ClipforgeError(f"{f.name} {problem}")

    def resolved(self, num_samples: int, epoch_steps: int | None = None, world_size: int = 1) -> Schedule:
        """The concrete schedule on `num_samples`: the batch clamped to the data (and to a multiple of
        the world size), `steps=None` turned into one epoch (`epoch_steps`, default samples // batch)
        and the warm-up clamped to `max_warmup_frac` of the steps."""
        batch = min(self.batch_size, num_samples)
        batch -= batch % world_size
        if batch < 1:
            raise ClipforgeError(f"a global batch from {num_samples} samples cannot feed {world_size} ranks")
        steps = self.steps if self.steps is not None else (epoch_steps or max(1, num_samples // batch))
        return replace(self, steps=steps, batch_size=batch,
                       warmup=min(self.warmup, int(self.max_warmup_frac * steps)))

    def train_config(self, **loop: Any) -> TrainConfig:
        """A `TrainConfig` with this schedule and the loop-only settings in `loop` (trainable, save_every...)."""
        if self.steps is None:
            raise ClipforgeError("resolve the schedule (Schedule.resolved) before training: steps is None")
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(Schedule)}, **loop)


@dataclass
class TrainConfig(Schedule):
    """Everything that shapes a training run: the `Schedule` plus the loop's own mechanics."""

    min_lr_ratio: float = 0.0
    trainable: list[str] | None = None  # parameter name patterns (fnmatch) to train; None: all
    frozen: list[str] | None = None
    # AdamW kernel: "auto" (fused where supported, else foreach), "fused", "foreach", "for-loop"
    optimizer: str = "auto"
    # attention kernel: "auto" (eager on a CPU under bf16 or for short sequences, else sdpa; train.fast), "sdpa",
    # "eager"
    attention: str = "auto"
    compile: bool = False  # torch.compile the step (eager fallback when the compiler is missing)
    eval_every: int = 0  # 0: never; else every N steps and at the end
    # Checkpoints (train/cadence.py): after `save_every` steps or `save_every_s` wall seconds since the last
    # one, whichever comes first, and at the end. save_every None: the wall cadence only; 0: no checkpoints.
    # save_every_s None or 0: no wall cadence. Both only decide when a checkpoint is written (result-neutral).
    save_every: int | None = None
    save_every_s: float | None = 1800.0
    keep_checkpoints: int = 2  # the latest and its predecessor (a fallback); <= 0: all
    local_loss: bool = True
    gather_with_grad: bool = True
    find_unused_parameters: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        """The schedule's checks, then the checkpoint cadence's (one line naming the field)."""
        super().__post_init__()
        if self.save_every is not None and self.save_every < 0:
            raise ClipforgeError(f"save_every must not be negative, got {self.save_every}")
        s = self.save_every_s
        if s is not None and not (math.isfinite(s) and s >= 0):
            raise ClipforgeError(f"save_every_s must be a finite number of seconds >= 0, got {s}")


# MM-LG extraction and descendant pre-training [choice, docs/methods.md B]: TLEG's small-scale recipe with
# a warm-up of 10 % of the steps (at most 100). Here, not in clipforge.learngene, so that the CLI can show
# it without importing torch.
LEARNGENE_SCHEDULE = Schedule(steps=1000, batch_size=64, lr=5e-4, weight_decay=0.05, warmup=100, max_warmup_frac=0.1)


def schedule(**overrides: Any) -> Any:
    """A dataclass field whose default is a `Schedule` with `overrides` (for configs that embed one)."""
    return field(default_factory=lambda: Schedule(**overrides))


def cli_fields() -> list[Any]:
    return [f for f in fields(Schedule) if f.metadata.get("cli", True)]


def _flag(name: str, prefix: str) -> str:
    return f"--{prefix}{name.replace('_', '-')}"


def _type(f: Any) -> Any:
    default = f.default if f.default is not MISSING else None
    if f.name in ("steps", "batch_size", "warmup", "log_every"):
        return int
    kind = type(default) if default is not None and not isinstance(default, bool) else float
    return finite_float if kind is float else kind


def add_schedule_flags(p: argparse.ArgumentParser, defaults: Schedule | None = None, prefix: str = "",
                       what: str = "", only: tuple[str, ...] | None = None,
                       aliases: dict[str, list[str]] | None = None) -> None:
    """Add `--{prefix}steps`, `--{prefix}lr`, ... generated from `Schedule`'s fields.

    `defaults`: the values shown in the help and used when a flag is unset (None: the flags default to
    None and `schedule_from_args` keeps the base schedule's value, e.g. a preset's). `what` names the
    phase in the help ("MCL stage "). `only`: the fields to expose. `aliases`: field → extra flag names.
    """
    for f in cli_fields():
        if only is not None and f.name not in only:
            continue
        names = [_flag(f.name, prefix)] + list((aliases or {}).get(f.name, []))
        if defaults is not None:
            value = getattr(defaults, f.name)
            shown = "unset" if value is None else value
            help_ = f"{what}{f.metadata['help']} (default {shown})"
        else:
            value, help_ = None, f"{what}{f.metadata['help']} (default: the preset's)"
        kwargs: dict[str, Any] = {"dest": f"{prefix.replace('-', '_')}{f.name}", "default": value, "help": help_}
        if f.name == "amp":
            kwargs["choices"] = ["auto", "bf16", "fp16", "off"]
        else:
            kwargs["type"] = _type(f)
        p.add_argument(*names, **kwargs)


def _seconds(text: str) -> float:
    """argparse `type=` for a duration: a finite number of seconds, not negative."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def add_checkpoint_flags(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """`--save-every N` and `--save-every-s SECONDS`: the loop's checkpoint cadence, `TrainConfig`'s defaults
    (`defaults=False`: None, i.e. every run keeps its own, for commands that apply them as execution options)."""
    p.add_argument("--save-every", type=int, default=TrainConfig.save_every if defaults else None, metavar="N",
                   help="also checkpoint every N steps since the last checkpoint (default: by wall time only)")
    p.add_argument("--save-every-s", type=_seconds, default=TrainConfig.save_every_s if defaults else None,
                   metavar="SECONDS",
                   help=f"checkpoint every SECONDS of wall time since the last checkpoint, whichever of the two "
                        f"comes first (default {TrainConfig.save_every_s:g}; 0: none by wall time)")


def schedule_from_args(args: argparse.Namespace, base: Schedule, prefix: str = "", **extra: Any) -> Schedule:
    """`base` with every flag of `add_schedule_flags(prefix=...)` that was given (not None) applied."""
    changes = {}
    for f in cli_fields():
        v = getattr(args, f"{prefix.replace('-', '_')}{f.name}", None)
        if v is not None:
            problem = _problem(f.name, v)
            if problem:
                raise ClipforgeError(f"{_flag(f.name, prefix)} {problem}")
            changes[f.name] = v
    return replace(base, **changes, **extra)
