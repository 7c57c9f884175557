"""Reduced precision on the Keras engine: what GPU users run (``mixed_float16``,
``mixed_bfloat16`` with ``engine="keras"``), run for real here on a tiny network.

TensorFlow runs both policies on any CPU (no bfloat16 units needed), so nothing here depends on
the CPU's features; OpenVINO's bfloat16, which does, is tested in tests/test_nets_openvino.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from featx import EmbeddingCache, ImageEmbedder
from featx.nets.backbones import resolve_backbone
from featx.nets.build import get_builder_network
from tests.conftest import tiny_convnet

#: Largest difference from float32 allowed, relative to the largest float32 feature. The tiny
#: network sums 27 then 36 products: float16 keeps 11 significant bits (unit roundoff 2^-11),
#: bfloat16 8 (2^-8), so a few roundings give about 4e-4 and 8e-3 here; the bounds leave
#: roughly a tenfold and a sixfold margin.
TOLERANCE = {"mixed_float16": 5e-3, "mixed_bfloat16": 5e-2}

#: The 16-bit type each policy computes in, and whether a float32 row holds a value of it.
COMPUTE_DTYPE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def _representable(rows: np.ndarray, precision: str) -> bool:
    """Whether every float32 value is exactly a float16 (or bfloat16) one: what a network whose
    last layer computes in that type returns, and what a float32 network almost never does."""
    if precision == "mixed_float16":
        return bool(np.array_equal(rows.astype(np.float16).astype(np.float32), rows))
    return bool(((rows.view(np.uint32) & 0xFFFF) == 0).all())  # bfloat16: float32's top half


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(24, 20, 20, 3), dtype=np.uint8)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_keras_mixed_precision_runs_in_16_bits_close_to_float32(precision, images, tmp_path):
    cache = tmp_path / "c.h5"
    full = ImageEmbedder(tiny_convnet, input_size=16, engine="keras", cache=cache)
    half = ImageEmbedder(tiny_convnet, input_size=16, engine="keras", precision=precision,
                         cache=cache)
    a, b = full.fit_transform(images), half.fit_transform(images)

    net = get_builder_network(half.backbone_config(), (16, 16, 3))
    assert net.engine == "keras"
    dtypes = {layer.name: layer.compute_dtype for layer in net.model.layers}
    assert dtypes["conv"] == dtypes["conv2"] == COMPUTE_DTYPE[precision], dtypes
    # The rows really came out of 16-bit arithmetic: returned as float32, every value is a
    # 16-bit one (the float32 rows are not) and differs from float32's.
    assert b.dtype == np.float32
    assert _representable(b, precision) and not _representable(a, precision)
    assert not np.array_equal(a, b)
    scale = np.abs(a).max()
    assert scale > 0.1  # a real signal to compare against
    worst = np.abs(b - a).max() / scale
    assert worst <= TOLERANCE[precision], (
        f"{precision} on the Keras engine differs from float32 by {worst:.2e} of the largest "
        f"feature; expected at most {TOLERANCE[precision]:.0e}"
    )

    # Cached apart from float32, under the policy's own name, and read back from there.
    # (A backbone function's group is its fingerprint, a dash and its sample shape.)
    fields = {g.fingerprint.split("-")[0]: g.fields["precision"]
              for g in EmbeddingCache(cache).groups()}
    assert fields == {full.backbone_config().fingerprint: "float32",
                      half.backbone_config().fingerprint: precision}
    again = ImageEmbedder(tiny_convnet, input_size=16, engine="keras", precision=precision,
                          cache=cache)
    np.testing.assert_array_equal(again.fit_transform(images), b)
    assert again.report_.n_hits == len(images)


def test_each_precision_and_engine_has_its_own_fingerprint():
    """Reduced precision is part of the fingerprint, per engine; float32 is one space."""
    def fingerprint(precision: str, engine: str) -> str:
        return resolve_backbone("mobilenet", weights=None, input_size=32, precision=precision,
                                engine=engine).fingerprint

    assert fingerprint("float32", "keras") == fingerprint("float32", "openvino")
    reduced = {fingerprint("mixed_float16", "keras"), fingerprint("mixed_bfloat16", "keras"),
               fingerprint("mixed_bfloat16", "openvino")}
    assert len(reduced) == 3 and fingerprint("float32", "keras") not in reduced
    with pytest.raises(ValueError, match="precision='half'"):
        resolve_backbone("mobilenet", precision="half")

