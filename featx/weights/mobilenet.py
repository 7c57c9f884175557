"""Offline ImageNet weights for Keras MobileNet v1, converted from a TF-slim graph on PyPI.

Keras downloads ImageNet weights from a host that air-gapped machines cannot reach. The PyPI source
archive ``nudity==0.2.3`` holds a TensorFlow 1 frozen graph of TF-slim MobileNet v1 (alpha 1.0,
224 px) with its ImageNet classifier intact. :func:`convert` copies the graph's constants into
``keras.applications.MobileNet`` and checks the result against the frozen graph's own output;
:func:`featx.weights.install_weights` downloads the archive (pinned by sha256) and writes
Keras's legacy HDF5 weight files under the names Keras looks for, so that plain
``keras.applications.MobileNet(weights="imagenet")`` works offline.

TensorFlow and Keras are imported inside the functions that need them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError
from featx.weights.archive import WeightSource

__all__ = ["SOURCE", "TOLERANCE", "convert", "filenames", "source"]

SOURCE = WeightSource(
    requirement="nudity==0.2.3",
    filename="nudity-0.2.3.tar.gz",
    sha256="d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f",
    member="nudity-0.2.3/nudity/files/retrained_graph.pb",
)
"""The pinned source archive and the frozen graph inside it."""

TOLERANCE = 1e-4
"""Largest accepted difference between Keras's and the source graph's class probabilities."""

# The slim graph's input placeholder (shape [1, 224, 224, 3], values in [-1, 1]) and its 1001-way
# ImageNet logits; index 0 is slim's "background" class, which Keras does not have.
_GRAPH_INPUT = "input"
_GRAPH_LOGITS = "MobilenetV1/Logits/SpatialSqueeze"
_GRAPH_SIZE = 224
# The input sizes keras.applications.MobileNet names its weight files by.
_MOBILENET_SIZES = (128, 160, 192, 224)
# Slim's batch-norm constants, in the order Keras's BatchNormalization holds its weights.
_BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")


def filenames(backbone: str = "mobilenet") -> list[str]:
    """The file names ``keras.applications.MobileNet(alpha=1.0, weights="imagenet")`` looks for.

    The same weights serve every input size (the graph was trained at 224 px), so one file per
    size is written, with and without the classifier.

    Examples
    --------
    >>> from featx.weights.mobilenet import filenames
    >>> filenames()[:2]
    ['mobilenet_1_0_128_tf.h5', 'mobilenet_1_0_128_tf_no_top.h5']
    """
    return [
        f"mobilenet_1_0_{rows}_tf{suffix}.h5"
        for rows in _MOBILENET_SIZES
        for suffix in ("", "_no_top")
    ]


def source(backbone: str = "mobilenet") -> WeightSource:
    """The pinned archive MobileNet's weights come from."""
    return SOURCE


def convert(
    backbone: str, archive: Path, say: Callable[[str], None]
) -> tuple[Any, Any, float]:
    """Read the frozen graph in ``archive`` into Keras MobileNets with and without their top.

    Returns the two models and the largest difference between the Keras model's and the graph's
    class probabilities; raises :class:`~featx.exceptions.FeatxError` beyond :data:`TOLERANCE`.
    """
    say(f"converting {SOURCE.member} to Keras MobileNet")
    return _convert_mobilenet(_read_graph_def(archive), say)


def _read_graph_def(archive: Path) -> Any:
    """Parse the frozen graph inside the archive into a ``tf.compat.v1.GraphDef``."""
    tf = _import_tensorflow()
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(SOURCE.member)
        if member is None:
            raise FeatxError(f"{archive} has no file {SOURCE.member}")
        data = member.read()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    return graph_def


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as error:
        raise FeatxError(
            "installing offline weights reads a TensorFlow graph and needs TensorFlow "
            "(pip install tensorflow); only the conversion needs it, not using the weights."
        ) from error
    return tf


# --------------------------------------------------------------------------------------------------
# Conversion and its check against the source graph


def _convert_mobilenet(graph_def: Any, say: Callable[[str], None]) -> tuple[Any, Any, float]:
    """Build Keras MobileNets with and without top holding the graph's weights, and check them.

    Returns the two models and the largest difference between the Keras model's and the graph's
    class probabilities.
    """
    import keras

    tf = _import_tensorflow()
    constants = {
        node.name: tf.make_ndarray(node.attr["value"].tensor)
        for node in graph_def.node
        if node.op == "Const"
    }
    top = keras.applications.MobileNet(weights=None, include_top=True, input_shape=(224, 224, 3))
    _check_batchnorm_epsilon(top, constants)
    for layer in top.layers:
        if layer.weights:
            layer.set_weights(_mobilenet_layer_weights(layer.name, constants))

    images = _check_images()
    expected = _run_graph(graph_def, images)
    got = keras.ops.convert_to_numpy(top(images, training=False))
    max_abs_diff = float(abs(got - expected).max())
    say(f"largest difference from the source graph's probabilities: {max_abs_diff:.2e}")
    if not max_abs_diff <= TOLERANCE:
        raise FeatxError(
            f"converted MobileNet differs from the source graph by {max_abs_diff:.3g} "
            f"(tolerance {TOLERANCE:g}); nothing was installed. This Keras version "
            f"({keras.__version__}) may build MobileNet differently; please report it."
        )

    no_top = keras.applications.MobileNet(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    for layer in no_top.layers:
        if layer.weights:
            layer.set_weights(top.get_layer(layer.name).get_weights())
    return top, no_top, max_abs_diff


def _mobilenet_layer_weights(layer: str, constants: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph constants for one Keras MobileNet layer, in Keras's order."""
    if layer == "conv_preds":
        prefix = "MobilenetV1/Logits/Conv2d_1c_1x1/"
        kernel, bias = _constants(constants, [prefix + "weights", prefix + "biases"])
        return [kernel[..., 1:], bias[1:]]  # drop slim's "background" class
    block = _mobilenet_graph_block(layer)
    if layer.endswith("_bn"):
        return _constants(constants, [f"{block}/BatchNorm/{name}" for name in _BN_PARAMS])
    kernel_name = "depthwise_weights" if layer.startswith("conv_dw_") else "weights"
    return _constants(constants, [f"{block}/{kernel_name}"])


def _mobilenet_graph_block(layer: str) -> str:
    """Map a Keras MobileNet layer name (``conv1``, ``conv_dw_3_bn`` ...) to its slim scope."""
    base = layer.removesuffix("_bn")
    if base == "conv1":
        return "MobilenetV1/Conv2d_0"
    kind, _, index = base.removeprefix("conv_").partition("_")
    if kind in ("dw", "pw") and index.isdigit():
        return f"MobilenetV1/Conv2d_{index}_{'depthwise' if kind == 'dw' else 'pointwise'}"
    raise FeatxError(f"Keras MobileNet layer {layer!r} has no counterpart in the slim graph")


def _constants(constants: dict[str, np.ndarray], names: Iterable[str]) -> list[np.ndarray]:
    missing = [name for name in names if name not in constants]
    if missing:
        raise FeatxError(f"the source graph lacks the constants {missing}")
    return [constants[name] for name in names]


def _check_batchnorm_epsilon(model: Any, constants: dict[str, np.ndarray]) -> None:
    """Slim adds epsilon to the variance as a constant ``.../batchnorm/add/y``; Keras must agree."""
    graph = {float(v) for k, v in constants.items() if k.endswith("/BatchNorm/batchnorm/add/y")}
    keras_eps = {float(layer.epsilon) for layer in model.layers if hasattr(layer, "epsilon")}
    if not graph or not all(np.isclose(g, k, rtol=1e-6) for g in graph for k in keras_eps):
        raise FeatxError(
            f"batch-norm epsilon differs: source graph {sorted(graph)}, Keras {sorted(keras_eps)}"
        )


def _check_images() -> np.ndarray:
    """Two fixed pseudo-random 224 px RGB images, scaled to [-1, 1] as MobileNet expects."""
    rng = np.random.default_rng(20240601)
    pixels = rng.integers(0, 256, size=(2, _GRAPH_SIZE, _GRAPH_SIZE, 3), dtype=np.uint8)
    return (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _run_graph(graph_def: Any, images: np.ndarray) -> np.ndarray:
    """Softmax over the 1000 ImageNet classes (background dropped) computed by the frozen graph."""
    tf = _import_tensorflow()
    names = {node.name for node in graph_def.node}
    if not {_GRAPH_INPUT, _GRAPH_LOGITS} <= names:
        raise FeatxError(f"the source graph lacks {_GRAPH_INPUT!r} or {_GRAPH_LOGITS!r}")

    def import_graph() -> None:
        tf.graph_util.import_graph_def(graph_def, name="")

    graph = tf.compat.v1.wrap_function(import_graph, [])
    logits_of = graph.prune(feeds=f"{_GRAPH_INPUT}:0", fetches=f"{_GRAPH_LOGITS}:0")
    # The placeholder has batch size 1.
    logits = np.stack([np.reshape(logits_of(tf.constant(image[None])), -1) for image in images])
    logits = logits[:, 1:].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)
