#!/usr/bin/env bash
# Set up (if needed) and run the main job on built-in data. Usage: bash scripts/demo.sh [demo args]
set -euo pipefail
cd "$(dirname "$0")/.."
# the demo counts the set-up in its first estimate and its final time (demo.pipeline.setup_seconds)
export CLIPFORGE_DEMO_STARTED="${CLIPFORGE_DEMO_STARTED:-$(date +%s)}"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${VENV:-.venv}/bin/clipforge" demo "$@"
