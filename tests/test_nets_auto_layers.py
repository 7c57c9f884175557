"""featx.nets.auto_layers: layers="auto" names real block outputs of every registry backbone."""

from __future__ import annotations

import pytest

from featx import list_backbones
from featx.nets.auto_layers import auto_layers, default_cut_name


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


@pytest.mark.parametrize("name", list_backbones())
def test_auto_layers_exist_in_depth_order(name, registry_networks):
    """Every backbone, not one per family: conftest's ``registry_networks`` builds them all once
    a session (with fresh layer-name counters, which must not matter either way)."""
    _, names = registry_networks[name]
    check(name, names)
