"""The tensors of one transformer block, by the names the learngene and the ancestry's layers share."""

from __future__ import annotations

# Learngene key → path inside one HF `CLIPEncoderLayer`.
BLOCK_PARTS: dict[str, str] = {
    "ln1_weight": "layer_norm1.weight", "ln1_bias": "layer_norm1.bias",
    "q_weight": "self_attn.q_proj.weight", "q_bias": "self_attn.q_proj.bias",
    "k_weight": "self_attn.k_proj.weight", "k_bias": "self_attn.k_proj.bias",
    "v_weight": "self_attn.v_proj.weight", "v_bias": "self_attn.v_proj.bias",
    "out_weight": "self_attn.out_proj.weight", "out_bias": "self_attn.out_proj.bias",
    "ln2_weight": "layer_norm2.weight", "ln2_bias": "layer_norm2.bias",
    "fc1_weight": "mlp.fc1.weight", "fc1_bias": "mlp.fc1.bias",
    "fc2_weight": "mlp.fc2.weight", "fc2_bias": "mlp.fc2.bias",
}


def block_param_name(tower: str, layer: int, part_path: str) -> str:
    """Full HF name of a block tensor, e.g. `vision_model.encoder.layers.3.mlp.fc1.weight`."""
    return f"{tower}_model.encoder.layers.{layer}.{part_path}"
