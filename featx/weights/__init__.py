"""Offline ImageNet weights: the installer, the pinned archives, each backbone's converter."""

from __future__ import annotations

from featx._home import INSTALLABLE, featx_home, keras_models_dir, missing_weights_message
from featx.weights.install import MANIFEST_NAME, install_weights, installed_weights

__all__ = [
    "INSTALLABLE",
    "featx_home",
    "keras_models_dir",
    "missing_weights_message",
    "MANIFEST_NAME",
    "install_weights",
    "installed_weights",
]
