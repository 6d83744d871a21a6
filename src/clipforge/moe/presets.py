"""Named DMU settings: `paper` (the released recipe), `demo` (the demo ancestry on 2 CPU cores), `quick` (tests).

The CLI's `--preset` picks one and its flags override single fields.
"""

from __future__ import annotations

from .dmu import DMUConfig
from .mcl import CLIPFORGE_OPTIMIZER, MCLConfig, paper_schedule
from .routers import RouterConfig


def presets() -> dict[str, DMUConfig]:
    """Named settings: `paper` is the released recipe; `demo` is sized for the demo ancestry on 2 CPU cores."""
    return {
        "paper": DMUConfig(),
        # Sized for the demo ancestry on 2 CPU cores: short stages at a larger lr than the paper's (which
        # is for a 428M-param model), routers at a learning rate at which they move; clipforge's optimiser
        # choices and shuffled cluster order (`paper` keeps the released code's).
        "demo": DMUConfig(
            mcl=MCLConfig(num_experts=4, k_img=3, k_txt=3, embed_batch_size=512, cluster_order="shuffled",
                          schedule=paper_schedule(lr=1e-4, steps=50, batch_size=128, warmup=5, **CLIPFORGE_OPTIMIZER)),
            router=RouterConfig(schedule=paper_schedule(lr=2e-3, weight_decay=0.01, steps=30, batch_size=128, warmup=3,
                                                        **CLIPFORGE_OPTIMIZER)),
        ),
        "quick": DMUConfig(
            mcl=MCLConfig(num_experts=3, k_img=2, k_txt=2, embed_batch_size=64, kmeans_niter=5,
                          cluster_order="shuffled",
                          schedule=paper_schedule(lr=1e-3, steps=4, batch_size=32, warmup=1, **CLIPFORGE_OPTIMIZER)),
            router=RouterConfig(schedule=paper_schedule(lr=1e-2, weight_decay=0.01, steps=4, batch_size=32, warmup=1,
                                                        **CLIPFORGE_OPTIMIZER)),
        ),
    }
