"""The backbone registry: every entry builds, has the width it claims and its own preprocessing."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from featx import (
    FeatxError,
    ImageEmbedder,
    UnknownBackboneError,
    WeightsNotFoundError,
    list_backbones,
)
from featx.nets.backbones import BACKBONES, get_backbone, resolve_backbone
from featx.nets.identity import import_named_module

REQUIRED = [
    "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *[f"efficientnet_b{i}" for i in range(8)],
    "efficientnet_v2_b0", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "vgg16", "vgg19", "inception_v3", "xception", "densenet121", "densenet169", "densenet201",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
]


def test_registry_has_the_required_backbones():
    assert set(REQUIRED) <= set(list_backbones())


def test_every_backbone_builds_with_the_width_it_claims(registry_networks):
    """The whole table, built by featx once a session (conftest's ``registry_networks``)."""
    import keras

    wrong = {}
    for name, spec in BACKBONES.items():
        if ":" in spec.constructor:  # a network featx defines (EfficientNet-Lite)
            module_name, _, function = spec.constructor.partition(":")
            assert callable(getattr(import_named_module(module_name), function)), name
            module = import_named_module(spec.module)
        else:
            assert hasattr(keras.applications, spec.constructor), name
            module = importlib.import_module(f"keras.applications.{spec.module}")
        assert callable(module.preprocess_input), name
        output_shape, _ = registry_networks[name]
        if output_shape != (None, spec.width):
            wrong[name] = output_shape
    assert wrong == {}


@pytest.mark.parametrize(
    ("name", "module"),
    [("mobilenet", "mobilenet"), ("resnet50", "resnet"), ("resnet50_v2", "resnet_v2"),
     ("vgg16", "vgg16"), ("inception_v3", "inception_v3"), ("densenet121", "densenet"),
     ("efficientnet_b3", "efficientnet"), ("convnext_tiny", "convnext")],
)
def test_each_backbone_uses_its_own_preprocessing(name, module):
    cfg = resolve_backbone(name, weights=None)
    assert cfg.preprocess == f"keras.applications.{module}.preprocess_input"
    assert cfg.input_size == (get_backbone(name).input_size,) * 2


def test_native_input_sizes():
    assert get_backbone("inception_v3").input_size == 299
    assert get_backbone("efficientnet_b7").input_size == 600
    assert get_backbone("efficientnet_v2_s").input_size == 384


def test_names_are_forgiving_and_errors_suggest():
    assert get_backbone("ResNet50V2").name == "resnet50_v2"
    assert get_backbone("efficientnet-b0").name == "efficientnet_b0"
    with pytest.raises(UnknownBackboneError, match=r"did you mean 'resnet50'.*Known:"):
        get_backbone("resnet5")
    with pytest.raises(UnknownBackboneError, match="does not exist"):
        resolve_backbone("models/missing.keras")


def test_invalid_choices_are_rejected():
    with pytest.raises(ValueError, match="pooling='mean'.*avg, max, flatten, none"):
        resolve_backbone("mobilenet", pooling="mean")
    with pytest.raises(ValueError, match="input_size"):
        resolve_backbone("mobilenet", input_size="big")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_backbone("mobilenet", weights="nowhere.h5")


def test_cut_at_a_layer_by_name_and_index_and_pooling():
    """The cut and the pooling are made in the Keras model both engines start from; the Keras
    engine runs it without converting each of these six networks for OpenVINO."""
    import keras

    def mobilenet(**kwargs) -> ImageEmbedder:
        return ImageEmbedder("mobilenet", weights=None, engine="keras", input_size=64, **kwargs)

    x = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    mid = mobilenet(layer="conv_pw_5_relu")
    assert mid.fit_transform(x).shape == (2, 256)
    flat = mobilenet(layer="conv_pw_5_relu", pooling="flatten")
    assert flat.fit_transform(x).shape == (2, 8 * 8 * 256)
    maxed = mobilenet(pooling="max")
    averaged = mobilenet().fit_transform(x)
    assert not np.allclose(maxed.fit_transform(x), averaged, atol=0, rtol=1e-3)
    by_index = mobilenet(layer=-1)
    assert by_index.fit_transform(x).shape == (2, 1024)
    with pytest.raises(UnknownBackboneError, match="did you mean 'conv_pw_5_relu'"):
        mobilenet(layer="conv_pw_5_rel").fit_transform(x)
    with pytest.raises(FeatxError, match="Choose pooling"):
        mobilenet(pooling="none").fit_transform(x)
    keras.backend.clear_session()


def test_a_layer_of_the_classifier_builds_the_full_network():
    # engine="keras": OpenVINO would convert VGG16's 138 million weights just to read a width.
    vgg = ImageEmbedder("vgg16", weights=None, layer="fc2", engine="keras")
    assert vgg._n_features_out == 4096


def test_weights_file_for_a_registry_backbone(tmp_path):
    import keras

    model = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    x = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    out = ImageEmbedder("mobilenet", weights=str(path), input_size=32).fit_transform(x)
    pre = keras.applications.mobilenet.preprocess_input(x.astype("float32"))
    expected = np.asarray(model(pre)).mean(axis=(1, 2))
    np.testing.assert_allclose(out, expected, atol=1e-5)
