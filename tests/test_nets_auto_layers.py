"""featx.nets.auto_layers: layers="auto" names real block outputs of every registry backbone."""

from __future__ import annotations

import keras
import pytest

from featx import list_backbones
from featx.nets.auto_layers import auto_layers, default_cut_name
from featx.nets.backbones import get_backbone
from featx.nets.identity import import_named_module

# Keras's smallest input for the Inception family and Xception; 32 px for the others.
_MIN_SIZE = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71}

#: The smallest member of each family (layer names follow one pattern per family; the deeper
#: members differ in blocks per stage, which auto_layers' tables record). Building all 38
#: registry entries takes minutes: scripts/dev/check_auto_layers.py does that walk.
REPRESENTATIVES = [
    "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50",
    "resnet50_v2", "vgg16", "vgg19", "inception_v3", "inception_resnet_v2", "xception",
    "densenet121", "convnext_tiny", "efficientnet_b0", "efficientnet_v2_b0", "efficientnet_lite0",
]


def layer_names(name: str) -> list[str]:
    """The layer names of a registry backbone without its classifier, built with weights=None
    and its variables left uninitialised (only the names matter)."""
    spec = get_backbone(name)
    size = _MIN_SIZE.get(spec.module, 32)
    keras.backend.clear_session()  # counter-named layers must not matter either way
    if ":" in spec.constructor:  # a network featx defines (EfficientNet-Lite)
        module, _, function = spec.constructor.partition(":")
        constructor = getattr(import_named_module(module), function)
    else:
        constructor = getattr(keras.applications, spec.constructor)
    with keras.StatelessScope():
        model = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    names = [layer.name for layer in model.layers]
    keras.backend.clear_session()
    return names


def check(name: str, names: list[str]) -> None:
    """Every auto layer of ``name`` is among ``names``, shallow to deep; the default cut last."""
    wanted = auto_layers(name)[:-1]
    missing = [n for n in wanted if n not in names]
    assert not missing, f"{name}: {missing} not among its layers"
    positions = [names.index(n) for n in wanted]
    assert positions == sorted(positions), f"{name}: {wanted} are not shallow to deep"
    assert default_cut_name(name) in (names[-1], "default"), name


def test_every_backbone_has_five_to_eight_distinct_layers_ending_at_the_default_cut():
    for name in list_backbones():
        layers = auto_layers(name)
        assert 5 <= len(layers) <= 8, (name, layers)
        assert layers[-1] is None and None not in layers[:-1]
        assert len(set(layers)) == len(layers)


def test_every_family_is_represented():
    modules = {get_backbone(n).module for n in list_backbones()}
    assert modules == {get_backbone(n).module for n in REPRESENTATIVES}


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_auto_layers_exist_in_depth_order(name):
    check(name, layer_names(name))
