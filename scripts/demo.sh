#!/usr/bin/env bash
# The main job: set up, then run the end-to-end demo offline (Fashion-MNIST, ImageNet MobileNet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/featx demo --out "${FEATX_DEMO_OUT:-demo-output}" "$@"
