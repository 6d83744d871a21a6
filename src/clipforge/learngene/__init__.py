"""MM-LG, clipforge's reconstruction of the Multimodal Learngene (arXiv 2506.16673).

Only the paper's abstract is available offline and no code is public: the method here is rebuilt from
that abstract and the group's public TLEG / SWS code (docs/methods.md Part B); every choice is a field of
`LearngeneConfig`. Pipeline: `Learngene` (the tensors) → `build_auxnet` (a CLIP tied to them) →
`extract` (least-squares init, `Distill` from the ancestry, `Quality` measured, `Plateau` stop) →
`Learngene.save` → `descend` (plain HF descendants of any depth and modality). `baselines` holds
Scratch, Heur-LG, Auto-LG, TinyCLIP-style inheritance and weight selection.
"""

from .auxnet import LearngeneWeight, build_auxnet, weight_sources
from .baselines import (
           Shape,
           auto_lg,
           block_scores,
           heur_lg,
           scratch,
           select_elements,
           tinyclip,
           weight_selection,
)
from .config import LearngeneConfig
from .descend import KEY_RULES, descend, provenance
from .distill import DepthSampledStep, Distill, KDStep, kd_loss
from .extract import ExtractConfig, extract
from .fit import fit_to_ancestry
from .learngene import BLOCK_PARTS, NON_BLOCK, Learngene
from .quality import Quality

__all__ = ["BLOCK_PARTS", "DepthSampledStep", "Distill", "ExtractConfig", "extract", "KEY_RULES", "KDStep", "Quality",
           "fit_to_ancestry", "select_elements", "tinyclip", "weight_selection", "Learngene", "LearngeneConfig",
           "LearngeneWeight", "NON_BLOCK", "Shape", "auto_lg", "block_scores", "build_auxnet", "descend", "heur_lg",
           "kd_loss", "provenance", "scratch", "weight_sources"]
