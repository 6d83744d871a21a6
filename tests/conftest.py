import os
import tempfile

# No hub is reachable: a stray download must fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never fill the user's cache (the demo ancestry lives there by default): one per session.
os.environ["CLIPFORGE_CACHE"] = tempfile.mkdtemp(prefix="clipforge-test-cache-")

import torch  # noqa: E402

# CLIPFORGE_TEST_THREADS lets the suite share a machine with a running benchmark.
torch.set_num_threads(int(os.environ.get("CLIPFORGE_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))
