"""precision="int8": NNCF post-training quantization on the OpenVINO engine."""

from __future__ import annotations

import numpy as np
import pytest

from featx import ImageEmbedder
from featx.exceptions import FeatxError
from featx.nets.quantize import MIN_CALIBRATION, int8_units


def tiny(shape):
    import keras

    inp = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


@pytest.fixture
def allow_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantize on any CPU: the numbers are checked here, the speed in the benchmarks."""
    monkeypatch.setenv("FEATX_ALLOW_INT8", "1")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_int8_is_offered_where_the_cpu_has_int8_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEATX_ALLOW_INT8", raising=False)
    emb = ImageEmbedder(tiny, input_size=16, precision="int8")
    if int8_units():  # VNNI/AMX (x86) or dot-product (Arm): resolved onto OpenVINO
        assert emb.backbone_config().engine == "openvino"
    else:  # no INT8 units: a clear message saying what it would cost
        with pytest.raises(ValueError, match="no.*INT8 would run at about float32 speed"):
            emb.backbone_config()


def test_int8_close_to_float32_and_cached_apart(allow_int8: None, tmp_path) -> None:
    X = images(40)
    cache = tmp_path / "c.h5"
    f32 = ImageEmbedder(tiny, input_size=16, engine="openvino", cache=cache).fit_transform(X)
    q = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache).fit_transform(X)
    assert q.shape == f32.shape and q.dtype == np.float32
    cos = (f32 * q).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(q, axis=1)
    assert cos.min() > 0.98
    from featx.cache.store import open_cache

    precisions = sorted(g.fields["precision"] for g in open_cache(cache).groups())
    assert precisions[0] == "float32" and precisions[1].startswith("int8@openvino:")


def test_calibration_digest_is_the_content(allow_int8: None) -> None:
    from featx.embed.calibration import calibrated_config
    from featx.embed.images import as_items

    config = ImageEmbedder(tiny, input_size=16, precision="int8").backbone_config()
    X = images(40)
    a = calibrated_config(config, X, [])
    b = calibrated_config(config, X[::-1], [])
    c = calibrated_config(config, None, as_items(images(40, seed=1))[0])
    assert a.calibration_id == b.calibration_id != c.calibration_id
    assert a.fingerprint_fields["precision"] == f"int8@openvino:{a.calibration_id}"
    assert a.fingerprint != c.fingerprint


def test_too_small_a_calibration_set_names_the_minimum(allow_int8: None) -> None:
    emb = ImageEmbedder(tiny, input_size=16, precision="int8", calibration=images(5))
    with pytest.raises(FeatxError, match=f"at least {MIN_CALIBRATION} readable calibration"):
        emb.fit_transform(images(40))
    unreadable = [b"not an image"] * 40
    emb = ImageEmbedder(tiny, input_size=16, precision="int8", calibration=unreadable)
    with pytest.raises(FeatxError, match=r"gave 0 of 40; unreadable: bytes\[0\]"):
        emb.fit_transform(images(40))


def test_int8_refuses_the_keras_engine(allow_int8: None) -> None:
    with pytest.raises(ValueError, match="precision='int8' runs on the OpenVINO engine"):
        ImageEmbedder(tiny, input_size=16, precision="int8", engine="keras").backbone_config()


def test_nncf_missing_names_the_extra(allow_int8: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf raises ImportError
    emb = ImageEmbedder(tiny, input_size=16, precision="int8")
    with pytest.raises(ImportError, match=r"pip install 'featx\[int8\]'"):
        emb.fit_transform(images(40, seed=7))
