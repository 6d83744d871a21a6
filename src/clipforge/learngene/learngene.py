"""`Learngene`: the tensors of an MM-LG learngene and the weighted sums that turn them into blocks.

clipforge's MM-LG is a reconstruction from the paper's abstract and the TLEG / SWS lineage (the paper's
full text and code are unavailable); the choices are fields of `LearngeneConfig`, whose docstring
writes out the weighted sums of every mode and schedule.

Layout. For every block sub-module k (`BLOCK_PARTS`) and every stage the learngene holds two tensors
per tower role (`ROLES`): in mode "mmlg" one `theta_mm[stage][k]` Parameter serves both towers, and
`theta_u_vision` / `theta_u_text` one tower each. The non-block parts (`NON_BLOCK`: embeddings,
pre/post/final norms, projections, logit scale) are Parameters too, copied or tied into every model
made from the learngene. A learned schedule adds `schedule_a[tower]`, `schedule_b[tower]` (1-D: one
scalar per Aux-Net layer, so weight decay leaves them alone).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ClipforgeError, first_line
from ..markdown import table
from .blocks import BLOCK_PARTS, block_param_name  # noqa: F401  (part of the learngene's API)
from .config import TOWERS, LearngeneConfig
from .widths import BlockShape, Narrowing, TowerMap, fit_projection, tensor_shapes

FORMAT = "clipforge.learngene/1"
WEIGHTS = "learngene.safetensors"
CONFIG = "learngene.json"

PART_OF_PATH = {path: key for key, path in BLOCK_PARTS.items()}

# Learngene key → (tower or None, full HF parameter name). The names are the same in `CLIPModel`,
# `CLIPVisionModelWithProjection` and `CLIPTextModelWithProjection`.
NON_BLOCK: dict[str, tuple[str | None, str]] = {
    "vision_class_embedding": ("vision", "vision_model.embeddings.class_embedding"),
    "vision_patch_embedding": ("vision", "vision_model.embeddings.patch_embedding.weight"),
    "vision_position_embedding": ("vision", "vision_model.embeddings.position_embedding.weight"),
    "vision_pre_ln_weight": ("vision", "vision_model.pre_layrnorm.weight"),
    "vision_pre_ln_bias": ("vision", "vision_model.pre_layrnorm.bias"),
    "vision_post_ln_weight": ("vision", "vision_model.post_layernorm.weight"),
    "vision_post_ln_bias": ("vision", "vision_model.post_layernorm.bias"),
    "visual_projection": ("vision", "visual_projection.weight"),
    "text_token_embedding": ("text", "text_model.embeddings.token_embedding.weight"),
    "text_position_embedding": ("text", "text_model.embeddings.position_embedding.weight"),
    "text_final_ln_weight": ("text", "text_model.final_layer_norm.weight"),
    "text_final_ln_bias": ("text", "text_model.final_layer_norm.bias"),
    "text_projection": ("text", "text_projection.weight"),
    "logit_scale": (None, "logit_scale"),
}
NON_BLOCK_OF_NAME = {name: key for key, (_, name) in NON_BLOCK.items()}

# mode → tower → (role weighted by a, role weighted by b).
ROLES: dict[str, dict[str, tuple[str, str]]] = {
    "mmlg": {"vision": ("theta_mm", "theta_u_vision"), "text": ("theta_mm", "theta_u_text")},
    "tleg_per_tower": {"vision": ("theta_a_vision", "theta_b_vision"), "text": ("theta_a_text", "theta_b_text")},
    "shared_only": {"vision": ("theta_mm", "theta_s"), "text": ("theta_mm", "theta_s")},
}


def shared_roles(mode: str) -> set[str]:
    """The roles of `mode` that serve both towers (stored at the shared shape)."""
    pairs = ROLES[mode]
    return set(pairs["vision"]) & set(pairs["text"])


def role_shape(cfg: LearngeneConfig, role: str) -> BlockShape:
    """The block shape role `role` is stored at: the shared shape, or its tower's own."""
    if role in shared_roles(cfg.mode):
        return cfg.shared_shape
    return cfg.tower_shape("vision" if role.endswith("_vision") else "text")


def mapped_towers(cfg: LearngeneConfig) -> list[str]:
    """Towers that read the shared tensors through a map (narrower than the shared shape)."""
    if not shared_roles(cfg.mode):
        return []
    return [t for t in TOWERS if cfg.tower_shape(t) != cfg.shared_shape]


def _non_block_shapes(cfg: LearngeneConfig) -> dict[str, tuple[int, ...]]:
    """Read the non-block shapes off a meta-device CLIP, so they can never drift from HF's."""
    from transformers import CLIPModel

    with torch.device("meta"):
        ref = CLIPModel(cfg.clip_config(1, 1))
    state = ref.state_dict()
    return {key: tuple(state[name].shape) for key, (_, name) in NON_BLOCK.items()}


def _head(tower: str) -> str:
    return "visual_projection" if tower == "vision" else "text_projection"


def narrowed_state(cfg: LearngeneConfig, ancestry: nn.Module) -> tuple[dict[str, Tensor], dict[str, int]]:
    """(state, depths): the ancestry's tensors, each tower cut to the learngene's block shape (`widths.Narrowing`)."""
    state = ancestry.state_dict()
    out: dict[str, Tensor] = {}
    depths: dict[str, int] = {}
    for tower in TOWERS:
        c = getattr(ancestry.config, f"{tower}_config")
        depths[tower] = c.num_hidden_layers
        have = BlockShape(c.hidden_size, c.num_attention_heads, c.intermediate_size)
        want = cfg.tower_shape(tower)
        if not want.fits_in(have):
            raise ClipforgeError(f"the learngene's {tower} blocks ({want.describe()}) do not fit in the ancestry's "
                                 f"({have.describe()}): build the learngene config with LearngeneConfig.from_ancestry")
        cut = Narrowing(have, want)
        prefix = f"{tower}_model.encoder.layers."
        for name, t in state.items():
            if name.startswith(prefix):
                out[name] = cut.block(PART_OF_PATH[name[len(prefix):].split(".", 1)[1]], t)
            elif name in NON_BLOCK_OF_NAME and NON_BLOCK[NON_BLOCK_OF_NAME[name]][0] == tower:
                out[name] = cut.non_block(name, t)
    out["logit_scale"] = state["logit_scale"]
    return out, depths


class Learngene(nn.Module):
    """The learngene: block tensors per role and stage, non-block parts, optional learned schedule.

    `Learngene(config, seed=...)` initialises per `config.init`: "random" (TLEG: trunc-normal(0.02)
    linear weights in both tensors, zero biases, LN γ 1 in the a-tensor and 0 in the b-tensor, or 1
    in both under "blend" so every layer starts at γ = a + b = 1; HF's init for the non-block parts);
    "lstsq" (pass `ancestry`, a `CLIPModel` whose towers are at least as large, cut to the learngene's
    shapes by `narrowed_state`: the tensors are the least-squares
    fit of the ancestry's layers over the schedule's basis, `fit.fit_to_ancestry`, recorded in
    `fit_record`) or "mean" (the a-tensor of a stage = mean of the ancestry blocks that the stage map
    sends there, over the towers the role serves; the b-tensor = 0, or = the a-tensor under "blend",
    so every Aux-Net layer starts at that mean). Both ancestry inits copy the non-block parts.
    `initialise=False` leaves the tensors uninitialised (used by `load`).
    """

    def __init__(self, config: LearngeneConfig, *, seed: int = 0, ancestry: nn.Module | None = None,
                 initialise: bool = True) -> None:
        super().__init__()
        self.config = config
        role_names = sorted({r for pair in ROLES[config.mode].values() for r in pair})
        self.blocks = nn.ModuleDict({
            role: nn.ModuleList([
                nn.ParameterDict({k: nn.Parameter(torch.empty(s))
                                  for k, s in tensor_shapes(role_shape(config, role)).items()})
                for _ in range(config.num_stages)])
            for role in role_names})
        self.mapped = mapped_towers(config)
        self.shared = shared_roles(config.mode)
        if config.construction == "project":  # fitted to the ancestry, stored with the learngene
            for t in self.mapped:
                self.register_buffer(f"projection_{t}",
                                     torch.empty(config.tower_shape(t).width, config.shared_shape.width))
        self._maps: dict[str, TowerMap] = {}  # per mapped tower, built on first use
        self.non_block = nn.ParameterDict(
            {k: nn.Parameter(torch.empty(s)) for k, s in _non_block_shapes(config).items()})
        if config.schedule == "learned":
            self.schedule_a = nn.ParameterDict(
                {t: nn.Parameter(torch.empty(config.aux_depth(t))) for t in TOWERS})
            self.schedule_b = nn.ParameterDict(
                {t: nn.Parameter(torch.empty(config.aux_depth(t))) for t in TOWERS})
        self.fit_record: dict[str, Any] | None = None
        if not initialise:
            return
        self._init_schedule()  # first: the least-squares fit reads the schedule's coefficients
        projected = config.construction == "project" and bool(self.mapped)
        if ancestry is None and (config.init in ("lstsq", "mean") or projected):
            raise ClipforgeError(f"learngene init {config.init!r}{' with construction project' if projected else ''}"
                                 " needs the ancestry model")
        state, depths = narrowed_state(config, ancestry) if ancestry is not None else ({}, {})
        self._fit_projections(state)
        if config.init == "mean":
            self._init_from_ancestry(state, depths)
        elif config.init == "lstsq":
            from .fit import fit_to_ancestry

            self.fit_record = fit_to_ancestry(self, state, depths)
            self._copy_non_block(state)
        else:
            self._init_random(seed)

    # --- structure -----------------------------------------------------------------------------

    def tower_map(self, tower: str) -> TowerMap | None:
        """How `tower` reads the shared tensors (None: at their own shape)."""
        if tower not in self.mapped:
            return None
        proj = getattr(self, f"projection_{tower}", None)
        if tower not in self._maps:
            self._maps[tower] = TowerMap(self.config.shared_shape, self.config.tower_shape(tower),
                                         self.config.construction, proj)
        self._maps[tower].projection = proj  # the buffer as it is now (`.to()` replaces it)
        return self._maps[tower]

    def view(self, role: str, tower: str, stage: int, key: str) -> Tensor:
        """`tower`'s view of one tensor of `role`: the tensor, or C(tensor) for a shared one read by a narrower one."""
        t = self.blocks[role][stage][key]
        cmap = self.tower_map(tower) if role in self.shared else None
        return t if cmap is None else cmap.apply(key, t)

    def roles(self, tower: str) -> tuple[str, str]:
        """(a-role, b-role) of `tower`, e.g. ("theta_mm", "theta_u_vision")."""
        if tower not in TOWERS:
            raise ClipforgeError(f"unknown tower {tower!r}; choose vision or text")
        return ROLES[self.config.mode][tower]

    def role(self, name: str) -> nn.ModuleList:
        """The per-stage tensors of role `name` (e.g. `role("theta_a_vision")[stage][key]`)."""
        if name not in self.blocks:
            raise AttributeError(f"mode {self.config.mode!r} has no {name}")
        return self.blocks[name]  # type: ignore[return-value]

    theta_mm = property(lambda self: self.role("theta_mm"), doc="Multimodal block per stage (both towers).")
    theta_u_vision = property(lambda self: self.role("theta_u_vision"), doc="Vision unimodal block per stage.")
    theta_u_text = property(lambda self: self.role("theta_u_text"), doc="Text unimodal block per stage.")

    def sources(self, tower: str, layer: int, depth: int, key: str) -> tuple[nn.Parameter, nn.Parameter]:
        """The two Parameters that block tensor `key` of `layer`/`depth` in `tower` combines."""
        first, second = self.roles(tower)
        stage = self.config.stage(layer, depth)
        return self.blocks[first][stage][key], self.blocks[second][stage][key]

    # --- the weighted sum ----------------------------------------------------------------------

    def coefficients(self, tower: str, layer: int, depth: int) -> tuple[Tensor | float, Tensor | float]:
        """(a, b) of layer `layer` (0-based) in a `tower` of `depth` layers (floats, or 0-d tensors if learned).

        "learned": the knots are the trained pairs c_j at positions j/K (K = Aux-Net depth of the
        tower). Layer l of depth L sits at t = l·K/L knot units (exact rational arithmetic, so at L = K
        layer j gets knot j exactly); the pair is c_j + f·(c_{j+1} − c_j) with j = floor(t), f = t − j.
        Past the last knot (t ∈ (K−1, K), less than one spacing) the last segment is extended; K = 1
        gives the single knot everywhere. A linear-initialised schedule thus stays linear at any depth.
        """
        if not 0 <= layer < depth:
            raise ClipforgeError(f"layer {layer} is outside a tower of depth {depth}")
        schedule = self.config.schedule
        if schedule == "linear":
            return 1.0, layer / depth
        if schedule == "blend":
            if depth == 1:
                return 1.0, 0.0
            return 1.0 - layer / (depth - 1), layer / (depth - 1)
        knots_a, knots_b = self.schedule_a[tower], self.schedule_b[tower]
        k = knots_a.shape[0]
        t = Fraction(layer * k, depth)
        j = int(t)
        if t == j:
            return knots_a[j], knots_b[j]
        j = min(j, k - 2)  # extend the last segment past the last knot
        f = float(t - j)
        return knots_a[j] + f * (knots_a[j + 1] - knots_a[j]), knots_b[j] + f * (knots_b[j + 1] - knots_b[j])

    def block_weight(self, tower: str, layer: int, depth: int, key: str) -> Tensor:
        """a·first[key] + b·second[key] for one sub-module tensor (differentiable)."""
        a, b = self.coefficients(tower, layer, depth)
        first, second = self.roles(tower)
        stage = self.config.stage(layer, depth)
        return a * self.view(first, tower, stage, key) + b * self.view(second, tower, stage, key)

    # --- initialisation ------------------------------------------------------------------------

    def _first_roles(self) -> set[str]:
        return {pair[0] for pair in ROLES[self.config.mode].values()}

    @torch.no_grad()
    def _init_random(self, seed: int) -> None:
        from ..models.registry import build

        first = self._first_roles()
        # A private RNG stream: initialising a learngene must not disturb the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for role in sorted(self.blocks):
                for stage in self.blocks[role]:
                    for key, p in stage.items():
                        if key.startswith("ln") and key.endswith("weight"):
                            p.fill_(1.0 if role in first or self.config.schedule == "blend" else 0.0)
                        elif key.endswith("bias"):
                            p.zero_()
                        else:
                            nn.init.trunc_normal_(p, std=0.02)
        ref = build(self.config.clip_config_dict(1, 1), seed=seed)
        self._copy_non_block(ref.state_dict())

    @torch.no_grad()
    def _copy_non_block(self, state: dict[str, Tensor]) -> None:
        for key, (_, name) in NON_BLOCK.items():
            src = state.get(name)
            if src is None or src.shape != self.non_block[key].shape:
                got = None if src is None else tuple(src.shape)
                raise ClipforgeError(f"ancestry tensor {name} has shape {got}, the learngene needs "
                                     f"{tuple(self.non_block[key].shape)}: build the learngene config with "
                                     "LearngeneConfig.from_ancestry")
            self.non_block[key].copy_(src)

    @torch.no_grad()
    def _fit_projections(self, state: dict[str, Tensor]) -> None:
        """Construction "project": P of each narrower tower from the towers' output heads (`widths.fit_projection`)."""
        wide = next((t for t in TOWERS if t not in self.mapped), None)
        for t in self.mapped:
            if hasattr(self, f"projection_{t}"):
                getattr(self, f"projection_{t}").copy_(
                    fit_projection(state[NON_BLOCK[_head(t)][1]], state[NON_BLOCK[_head(wide)][1]]))

    @torch.no_grad()
    def _init_from_ancestry(self, state: dict[str, Tensor], depths: dict[str, int]) -> None:
        cfg = self.config
        if self.mapped:
            raise ClipforgeError("learngene init 'mean' needs towers of one block shape; use init 'lstsq'")
        for role in self.blocks:
            towers = [t for t in TOWERS if role in self.roles(t)]
            is_first = role in self._first_roles()
            for s, stage in enumerate(self.blocks[role]):
                layers = [(t, i) for t in towers for i in range(depths[t]) if cfg.stage(i, depths[t]) == s]
                layers = layers or [(t, i) for t in towers for i in range(depths[t])]  # stage unused at this depth
                for key, p in stage.items():
                    mean = torch.stack([state[block_param_name(t, i, BLOCK_PARTS[key])].float()
                                        for t, i in layers]).mean(0)
                    p.copy_(mean if is_first or cfg.schedule == "blend" else torch.zeros_like(mean))
        self._copy_non_block(state)

    @torch.no_grad()
    def _init_schedule(self) -> None:
        """Learned schedules start as the linear one: a = 1, b = j/K."""
        if self.config.schedule != "learned":
            return
        for t in TOWERS:
            k = self.config.aux_depth(t)
            self.schedule_a[t].fill_(1.0)
            self.schedule_b[t].copy_(torch.arange(k, dtype=torch.float32) / k)

    # --- size and storage ----------------------------------------------------------------------

    def num_parameters(self) -> int:
        """Parameters stored (every tensor of the learngene, each once, the fitted projections included)."""
        return sum(p.numel() for p in self.parameters()) + self._projection_numel()

    def _projection_numel(self) -> int:
        return sum(getattr(self, f"projection_{t}").numel() for t in self.mapped if hasattr(self, f"projection_{t}"))

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per role, non-block parts and schedule."""
        out = {role: sum(p.numel() for p in self.blocks[role].parameters()) for role in self.blocks}
        out["non_block"] = sum(p.numel() for p in self.non_block.parameters())
        if self.config.schedule == "learned":
            out["schedule"] = sum(p.numel() for p in (*self.schedule_a.values(), *self.schedule_b.values()))
        if self._projection_numel():
            out["projections"] = self._projection_numel()
        out["total"] = self.num_parameters()
        return out

    def save(self, out_dir: str | os.PathLike, *, provenance: dict[str, Any] | None = None) -> Path:
        """Write `learngene.safetensors`, `learngene.json` (format, config, provenance) and a card, atomically."""
        from ..files import atomic_dir, portable

        out_dir = Path(out_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "config": self.config.to_dict(), "num_parameters": self.num_parameters(),
                "provenance": portable(dict(provenance or {}))}  # written for others: no absolute paths
        with atomic_dir(out_dir) as tmp:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
            (tmp / CONFIG).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            (tmp / "README.md").write_text(self.card(meta["provenance"]))
        return out_dir

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> Learngene:
        """Rebuild a saved learngene exactly (every tensor, the config).

        Whatever is wrong with the directory (JSON, config field, truncated or non-finite weights) is a
        one-line `ClipforgeError` naming the file, raised before anything is built from it.
        """
        from ..files import read_json_object
        from ..models.io import nonfinite_tensor

        model_dir = Path(model_dir)
        meta_path, weights = model_dir / CONFIG, model_dir / WEIGHTS
        if not meta_path.is_file() or not weights.is_file():
            raise ClipforgeError(f"{model_dir}: not a learngene directory (needs {CONFIG} and {WEIGHTS})")
        meta = read_json_object(meta_path, "a learngene record")
        if meta.get("format") != FORMAT:
            raise ClipforgeError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if "config" not in meta:
            raise ClipforgeError(f"{meta_path}: has no 'config' (the learngene's shape and choices)")
        try:
            config = LearngeneConfig.from_dict(meta["config"])
            lg = cls(config, initialise=False)
        except ClipforgeError as e:  # the config's own checks name the field, not the file
            raise ClipforgeError(f"{meta_path}: {e}") from None
        except (RuntimeError, ValueError, TypeError, OverflowError, MemoryError) as e:  # absurd sizes
            raise ClipforgeError(f"{meta_path}: its config describes no buildable learngene "
                                 f"({type(e).__name__}: {first_line(e)})") from None
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own types for a truncated file or a corrupt header
            raise ClipforgeError(f"{weights}: not a readable safetensors file ({first_line(e)})") from None
        try:
            lg.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ClipforgeError(f"{weights}: does not match {meta_path} ({first_line(e)})") from None
        bad = nonfinite_tensor(lg.state_dict().items())
        if bad is not None:
            raise ClipforgeError(f"{weights}: tensor {bad!r} holds NaN or inf values; the learngene is refused "
                                 "(extract it again)")
        return lg

    def card(self, provenance: dict[str, Any] | None = None) -> str:
        """A README for the saved learngene: what it is, its choices, its size."""
        c = self.config
        lines = ["# MM-LG learngene (clipforge)", "",
                 "clipforge's MM-LG is a reconstruction from the paper's abstract (arXiv 2506.16673) and its "
                 "TLEG/SWS lineage; every choice below is a config field in `learngene.json`.", "",
                 "Layer l of a tower of depth L uses `a(l, L)·first + b(l, L)·second` per block tensor.", ""]
        lines += table(["choice", "value"], [[k, getattr(c, k)] for k in (
            "mode", "schedule", "num_stages", "aux_depth_vision", "aux_depth_text", "init", "construction")])
        towers = "; ".join(f"{t} {c.tower_shape(t).describe()}" for t in TOWERS)
        shared = (f" Shared tensors at the {c.shared_shape.width}-wide shape, read by the narrower tower by "
                  f"construction `{c.construction}`." if self.mapped else "")
        lines += ["", f"Blocks: {towers}; {c.act}.{shared} Inputs: {c.image_size} px "
                  f"(patch {c.patch_size}), {c.context} tokens. Projection {c.projection_dim}.", "",
                  "## Parameters", ""]
        lines += table(["part", "parameters"], [[k, f"{v:,}"] for k, v in self.parameter_breakdown().items()])
        if provenance:
            lines += ["", "## Provenance", ""]
            lines += [f"- {k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}"
                      for k, v in provenance.items()]
        lines += ["", "Descendants: `clipforge.learngene.descend(Learngene.load(dir), depth_vision, depth_text, "
                  "kind)`."]
        return "\n".join(lines) + "\n"
