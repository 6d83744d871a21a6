"""The Aux-Net: a plain HF `CLIPModel` whose blocks are computed from a learngene on every forward.

Part of clipforge's MM-LG reconstruction (from the paper's abstract and its TLEG lineage; see
`LearngeneConfig`). Ties, made so that a test can check them:

* every block tensor of layer l in a tower of depth L is a `torch.nn.utils.parametrize`
  parametrization returning `learngene.block_weight(tower, l, L, key)`; the tensor it nominally
  parametrizes is a zero-size, non-persistent buffer, so the Aux-Net stores no dead copy of any block
  and the optimizer never sees one. Gradients reach the learngene's tensors, and through both towers
  the one `theta_mm` Parameter;
* the non-block Parameters (embeddings, norms, projections, logit scale) *are* the learngene's
  `non_block` Parameters (same objects);
* the learngene is registered once, as the submodule `learngene`, so `parameters()`, `.to()`,
  `state_dict()` and training checkpoints see each tensor once.

`encode.image_features` / `text_features` and `train()` work on it unchanged: it is a `CLIPModel`.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers import CLIPModel

from ..errors import ClipforgeError
from .config import TOWERS
from .learngene import BLOCK_PARTS, NON_BLOCK, Learngene


class LearngeneWeight(nn.Module):
    """Parametrization of one block tensor: ignores its input and returns the learngene's weighted sum."""

    def __init__(self, learngene: Learngene, tower: str, layer: int, depth: int, key: str) -> None:
        super().__init__()
        # A plain reference, not a submodule: registered here, the whole learngene would be saved
        # again under every block tensor's state-dict prefix. The Aux-Net registers it once.
        self.__dict__["learngene"] = learngene
        self.tower, self.layer, self.depth, self.key = tower, layer, depth, key

    def forward(self, _unused: Tensor) -> Tensor:
        return self.learngene.block_weight(self.tower, self.layer, self.depth, self.key)

    def sources(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The two learngene Parameters this tensor is a weighted sum of."""
        return self.learngene.sources(self.tower, self.layer, self.depth, self.key)

    def extra_repr(self) -> str:
        return f"{self.tower} layer {self.layer}/{self.depth} {self.key}"


def _split(name: str) -> tuple[str, str]:
    module, _, tensor = name.rpartition(".")
    return module, tensor


def _parametrize_block(layer_module: nn.Module, learngene: Learngene, tower: str, layer: int, depth: int,
                       device: torch.device) -> None:
    for key, path in BLOCK_PARTS.items():
        mod_path, tensor_name = _split(path)
        mod = layer_module.get_submodule(mod_path)
        # Swap the (meta) Parameter for a zero-size buffer: parametrize keeps whatever it finds as
        # `original`, and a buffer is neither stored nor trained.
        del mod._parameters[tensor_name]
        mod.register_buffer(tensor_name, torch.empty(0, device=device), persistent=False)
        parametrize.register_parametrization(
            mod, tensor_name, LearngeneWeight(learngene, tower, layer, depth, key), unsafe=True)
        plist = mod.parametrizations[tensor_name]
        plist.register_buffer("original", plist.original, persistent=False)


def _materialize_position_ids(model: nn.Module, device: torch.device) -> None:
    for module in model.modules():
        buf = module._buffers.get("position_ids")
        if buf is not None and buf.is_meta:
            module._buffers["position_ids"] = torch.arange(buf.shape[-1], device=device).expand(buf.shape).clone()


def build_auxnet(learngene: Learngene, depth_vision: int | None = None, depth_text: int | None = None) -> CLIPModel:
    """A `CLIPModel` of depths (L_v, L_t) (default: the config's Aux-Net depths) tied to `learngene`."""
    cfg = learngene.config
    depths = {"vision": cfg.aux_depth_vision if depth_vision is None else depth_vision,
              "text": cfg.aux_depth_text if depth_text is None else depth_text}
    device = next(learngene.parameters()).device
    # On the meta device: every tensor is about to be replaced, so allocating them would be waste.
    with torch.device("meta"):
        model = CLIPModel(cfg.clip_config(depths["vision"], depths["text"]))
    model.add_module("learngene", learngene)
    for tower in TOWERS:
        layers = getattr(model, f"{tower}_model").encoder.layers
        for i, layer_module in enumerate(layers):
            _parametrize_block(layer_module, learngene, tower, i, depths[tower], device)
    for key, (_, name) in NON_BLOCK.items():
        mod_path, tensor_name = _split(name)
        setattr(model.get_submodule(mod_path), tensor_name, learngene.non_block[key])
    _materialize_position_ids(model, device)
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # a tensor neither tied nor parametrized would silently stay untrained
        raise ClipforgeError(f"Aux-Net tensors left untied: {left[:5]}")
    return model.eval()


def weight_sources(model: CLIPModel, tower: str, layer: int, path: str) -> tuple[nn.Parameter, nn.Parameter]:
    """The learngene Parameters behind block tensor `path` (e.g. `self_attn.q_proj.weight`) of an Aux-Net."""
    mod_path, tensor_name = _split(path)
    mod = getattr(model, f"{tower}_model").encoder.layers[layer].get_submodule(mod_path)
    if not parametrize.is_parametrized(mod, tensor_name):
        raise ClipforgeError(f"{tower} layer {layer} {path} is not tied to a learngene")
    return mod.parametrizations[tensor_name][0].sources()
