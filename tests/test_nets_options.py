"""The embedder's options, declared once: the table against the signatures that spell it."""

from __future__ import annotations

import inspect

import pytest

from featx import ImageEmbedder
from featx.nets.backbones import resolve_backbone
from featx.nets.options import (
    EMBEDDER_OPTIONS,
    backbone_options,
    option,
    parse_input_size,
    parse_positive_int,
)


def test_the_embedder_s_signature_is_the_table():
    params = list(inspect.signature(ImageEmbedder.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == [
        (opt.name, opt.default) for opt in EMBEDDER_OPTIONS
    ]
    assert set(ImageEmbedder._parameter_constraints) == {opt.name for opt in EMBEDDER_OPTIONS}


def test_resolve_backbone_takes_the_options_that_describe_the_backbone():
    params = inspect.signature(resolve_backbone).parameters
    described = [opt for opt in EMBEDDER_OPTIONS if opt.backbone]
    assert set(params) == {opt.name for opt in described}
    # The same defaults, but the engine: resolve_backbone alone runs Keras unless told.
    assert {name: p.default for name, p in params.items() if name not in ("backbone", "engine")} \
        == {opt.name: opt.default for opt in described if opt.name not in ("backbone", "engine")}


def test_backbone_options_reads_an_embedder():
    embedder = ImageEmbedder("resnet50", pooling="max", decoder="pillow", safe_mode=False)
    values = backbone_options(embedder)
    assert values["pooling"] == "max" and values["decoder"] == "pillow"
    assert values["safe_mode"] is False and "cache" not in values and "backbone" not in values


def test_every_stored_option_describes_the_backbone():
    for opt in EMBEDDER_OPTIONS:
        assert opt.stored is None or opt.backbone, opt.name
        assert not opt.names_group or opt.stored is not None, opt.name


@pytest.mark.parametrize("text, value", [("224", 224), ("160x224", (160, 224)),
                                         ("160,224", (160, 224))])
def test_input_sizes_parse(text, value):
    assert parse_input_size(text) == value


@pytest.mark.parametrize("text", ["0", "x", "1x2x3", "-4"])
def test_bad_numbers_say_what_was_expected(text):
    with pytest.raises(ValueError, match="expected"):
        parse_input_size(text)
    if "x" not in text:
        with pytest.raises(ValueError, match="expected a positive integer"):
            parse_positive_int(text)


def test_an_unknown_option_is_a_key_error():
    with pytest.raises(KeyError, match="no option 'colour'"):
        option("colour")
