"""CLIP-MoE, the method: diversified multiplet upcycling (docs/methods.md Part A).

`clusters` + `cluster_sampler` + `embedding` + `mcl` (the MCL stages), `pack` (stage models → experts),
`balance` + `routers` (router training), `dmu` (the whole pipeline), `baselines` (direct FT, sparse
upcycling, w/o MCL), `routing` (how tokens spread over the experts; the report of a run is
`clipforge.report.moe_run`). The model it makes lives in `clipforge.models.clip_moe` (imported here, so the
CLIP-MoE is registered with transformers). Import what
you use from its module: `from clipforge.moe.dmu import DMUConfig, dmu`, `from clipforge.moe.pack import pack`.
"""

from ..models import clip_moe  # noqa: F401  (registers the CLIP-MoE with transformers)
