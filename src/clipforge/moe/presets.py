"""Named DMU settings: `paper` (the released recipe), `demo` (the demo ancestry on 2 CPU cores), `quick` (tests).

The CLI's `--preset` picks one and its flags override single fields.
"""

from __future__ import annotations

from .dmu import DMUConfig
from .mcl import MCLConfig
from .routers import RouterConfig


def presets() -> dict[str, DMUConfig]:
    """Named settings: `paper` is the released recipe; `demo` is sized for the demo ancestry on 2 CPU cores."""
    return {
        "paper": DMUConfig(),
        # The budget of `benchmarks/clipmoe` (see its results.md): short stages at a larger lr than the
        # paper's (which is for a 428M-param model), routers at a learning rate at which they move.
        "demo": DMUConfig(
            mcl=MCLConfig(num_experts=4, k_img=3, k_txt=3, steps=50, lr=1e-4, global_batch=128, warmup=5,
                          embed_batch_size=512),
            router=RouterConfig(steps=30, lr=2e-3, global_batch=128, warmup=3),
        ),
        "quick": DMUConfig(
            mcl=MCLConfig(num_experts=3, k_img=2, k_txt=2, steps=4, lr=1e-3, global_batch=32, warmup=1,
                          embed_batch_size=64, kmeans_niter=5),
            router=RouterConfig(steps=4, lr=1e-2, global_batch=32, warmup=1),
        ),
    }
