"""Networks: the backbone registry and fingerprints, building and cutting Keras models, the
OpenVINO engine."""

from __future__ import annotations

from featx.nets.auto_layers import auto_layers, default_cut_name
from featx.nets.backbones import (
    BACKBONES,
    ENGINES,
    POOLINGS,
    PRECISIONS,
    PREPROCESS_MODES,
    BackboneConfig,
    BackboneSpec,
    get_backbone,
    list_backbones,
    resolve_backbone,
)
from featx.nets.build import clear_networks, get_builder_network, get_network
from featx.nets.keras_model import load_model_file
from featx.nets.network import Network

__all__ = [
    "BACKBONES",
    "ENGINES",
    "POOLINGS",
    "PRECISIONS",
    "PREPROCESS_MODES",
    "BackboneConfig",
    "BackboneSpec",
    "get_backbone",
    "list_backbones",
    "resolve_backbone",
    "clear_networks",
    "get_builder_network",
    "get_network",
    "Network",
    "auto_layers",
    "default_cut_name",
    "load_model_file",
]
