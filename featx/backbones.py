"""The backbone registry; turning a backbone description into a frozen, compiled network.

A backbone is described by plain values (a registry name, a model path, a ``keras.Model`` or a
builder function; weights; cut layer; pooling; input size; preprocessing). :func:`resolve_backbone`
turns those values into a :class:`BackboneConfig` *without building anything*; its
:attr:`~BackboneConfig.fingerprint` names the embedding space and keys the HDF5 cache.
:func:`get_network` builds the Keras model on first use and keeps it in a process-level registry,
so that every clone of an estimator in one process shares one network.

Keras (and with it the backend, TensorFlow by default) is imported only when a network is built.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.metadata
import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, UnknownBackboneError, WeightsNotFoundError

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
    "get_network",
    "Network",
]

#: Version of the embedding format; part of every fingerprint. Bump it when a change in featx
#: (decoding, resizing, preprocessing) would change the numbers an unchanged backbone produces.
EMBEDDING_FORMAT_VERSION = 1

POOLINGS = ("avg", "max", "flatten", "none")
PREPROCESS_MODES = ("auto", "none", "scale", "tf", "caffe", "torch")
RESIZE_POLICIES = ("resize", "center_crop")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of the registry: a ``keras.applications`` network by friendly name.

    Attributes
    ----------
    name : str
        The friendly name (``"resnet50"``).
    constructor : str
        The function in ``keras.applications`` (``"ResNet50"``).
    module : str
        The ``keras.applications`` submodule whose ``preprocess_input`` belongs to the network.
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
    return {r[0]: BackboneSpec(*r) for r in rows}


#: The registry: friendly name -> :class:`BackboneSpec`.
BACKBONES: dict[str, BackboneSpec] = _specs()


def list_backbones() -> list[str]:
    """Return the friendly names of every registered backbone, sorted.

    Examples
    --------
    >>> from featx import list_backbones
    >>> "mobilenet" in list_backbones() and "resnet50" in list_backbones()
    True
    """
    return sorted(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    """Return the registry entry for ``name``; raise :class:`UnknownBackboneError` if unknown.

    Examples
    --------
    >>> from featx.backbones import get_backbone
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

    @property
    def fingerprint_fields(self) -> dict[str, Any]:
        """Everything that decides the numbers an image turns into."""
        return {
            "format": EMBEDDING_FORMAT_VERSION,
            "backbone": self.name if self.kind == "registry" else f"{self.kind}:{self.source_id}",
            "weights": self.weights_id,
            "layer": self.layer,
            "pooling": self.pooling,
            "input_size": list(self.input_size) if self.input_size else None,
            "resize": self.resize if self.input_size else None,
            "preprocess": self.preprocess,
            "precision": self.precision,
        }

    @property
    def fingerprint(self) -> str:
        """A short hex digest of :attr:`fingerprint_fields`; names the cache group."""
        text = json.dumps(self.fingerprint_fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

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


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASH_MEMO[memo_key] = h.hexdigest()
    return _HASH_MEMO[memo_key]


def _keras_version() -> str:
    try:
        return importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def keras_backend_name() -> str:
    """The Keras backend in use, found without importing Keras when it is not imported yet."""
    import sys

    if "keras" in sys.modules:
        return str(sys.modules["keras"].backend.backend())
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return str(json.loads(config.read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


def _weights_identity(weights: Any) -> str:
    if weights is None:
        # Seeded random initialisers draw different numbers on different backends.
        return f"random@seed0:{keras_backend_name()}"
    if isinstance(weights, str) and weights == "imagenet":
        return f"imagenet@keras-{_keras_version()}"
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {str(path)!r} does not exist. Expected weights='imagenet', "
                "weights=None (random initialisation) or the path of an existing weights file."
            )
        return f"sha256:{file_sha256(path)}"
    raise FeatxError(
        f"weights={weights!r} is not understood. Expected 'imagenet', None or a file path."
    )


def _model_identity(model: Any) -> str:
    h = hashlib.sha256(model.to_json().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


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
    pooling: str | None = "avg",
    input_size: Any = None,
    resize: str = "resize",
    preprocess: Any = "auto",
    precision: str = "float32",
    safe_mode: bool = True,
) -> BackboneConfig:
    """Turn an embedder's backbone parameters into a :class:`BackboneConfig`, building nothing.

    Parameters
    ----------
    backbone : str, path, keras.Model or callable
        A registry name (see :func:`list_backbones`), the path of a ``.keras``/``.h5`` model, a
        ``keras.Model``, or a function ``f(input_shape) -> keras.Model`` that builds a
        deterministic model for samples of ``input_shape``.
    weights, layer, pooling, input_size, resize, preprocess, precision, safe_mode
        As in :class:`featx.ImageEmbedder`.

    Examples
    --------
    >>> from featx.backbones import resolve_backbone
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
    config = _resolve_source(backbone, weights, layer, pooling_s, size, resize_s, prep)
    if precision_s != "float32" and config.kind not in ("registry", "builder"):
        raise ValueError(
            f"precision={precision_s!r} needs a registry backbone or a backbone function, which "
            "featx builds itself; a saved model keeps the dtypes it was saved with."
        )
    return replace(config, precision=precision_s, safe_mode=bool(safe_mode),
                   preprocess_fn=preprocess if callable(preprocess) else None)


def _resolve_source(
    backbone: Any,
    weights: Any,
    layer: str | int | None,
    pooling_s: str,
    size: tuple[int, int] | None,
    resize_s: str,
    prep: str,
) -> BackboneConfig:
    if isinstance(backbone, str) and not _looks_like_path(backbone):
        spec = get_backbone(backbone)
        if prep == "auto":
            prep = spec.preprocess
        return BackboneConfig(
            kind="registry", name=spec.name, weights=weights,
            weights_id=_weights_identity(weights), layer=layer, pooling=pooling_s,
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
        return BackboneConfig(
            kind="file", name=str(path), weights=None, weights_id="in-file", layer=layer,
            pooling=pooling_s, input_size=size, resize=resize_s,
            preprocess="none" if prep == "auto" else prep, source=str(path.resolve()),
            source_id=f"sha256:{file_sha256(path)}",
        )
    if _is_keras_model(backbone):
        return BackboneConfig(
            kind="model", name=getattr(backbone, "name", "model"), weights=None,
            weights_id="in-model", layer=layer, pooling=pooling_s, input_size=size,
            resize=resize_s, preprocess="none" if prep == "auto" else prep, source=backbone,
            source_id=f"sha256:{_model_identity(backbone)}",
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


def _looks_like_path(text: str) -> bool:
    return text.endswith((".keras", ".h5", ".hdf5")) or os.sep in text or "/" in text


def _is_keras_model(obj: Any) -> bool:
    # Checked by class name so that resolving a registry name never imports Keras.
    return any(
        c.__module__.startswith("keras") and c.__name__ in ("Model", "Functional", "Sequential")
        for c in type(obj).__mro__
    )


# --------------------------------------------------------------------------------------------
# Building: the process-level registry of compiled networks
# --------------------------------------------------------------------------------------------


class Network:
    """A built, frozen feature network with its preprocessing and a compiled forward function.

    Attributes
    ----------
    config : BackboneConfig
    model : keras.Model
        The cut and pooled model; its output has shape ``(None, width)``.
    sample_shape : tuple of int
        The shape of one input sample, e.g. ``(224, 224, 3)`` or ``(12,)``.
    width : int
        Length of one embedding.
    n_seen : int
        How many samples went through the network in this process (used by tests and reports).
    """

    def __init__(self, config: BackboneConfig, model: Any):
        self.config = config
        self.model = model
        shape = tuple(model.input_shape[1:])
        if any(d is None for d in shape):
            raise FeatxError(
                f"the model's input shape {model.input_shape} has unknown dimensions; pass "
                "input_size=(height, width) to say what size the images should be resized to."
            )
        self.sample_shape: tuple[int, ...] = tuple(int(d) for d in shape)
        out = model.output_shape
        if len(out) != 2 or out[-1] is None:
            raise FeatxError(
                f"the cut model's output has shape {out}; expected (None, width). "
                "Choose pooling='avg', 'max' or 'flatten' for a spatial layer."
            )
        self.width = int(out[-1])
        self.n_seen = 0
        self._lock = threading.Lock()
        # Preprocessing runs inside the compiled function (on the accelerator, fused with the
        # network) unless it is the user's own Python function, which runs on the batch first.
        self._numpy_preprocess = config.preprocess_fn
        graph_prep = None if config.preprocess_fn is not None else _graph_preprocess(
            config.preprocess
        )
        self._dispatch = _compile_dispatch(model, graph_prep)

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def channels(self) -> int:
        return self.sample_shape[-1] if self.is_image else 0

    def prepare(self, samples: list[np.ndarray]) -> np.ndarray:
        """Stack decoded samples into a batch; uint8 stays uint8 (a quarter of the bytes to
        move). A user's own preprocessing function is applied here, in NumPy."""
        batch = np.stack(samples)
        if self._numpy_preprocess is not None:
            batch = np.asarray(self._numpy_preprocess(batch.astype(np.float32)), np.float32)
        return batch

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Preprocess and run the compiled network on a prepared batch; returns float32 rows."""
        return self.dispatch(batch)()

    def dispatch(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        """Start the network on a prepared batch; return a function that waits for its rows.

        JAX dispatches asynchronously: the caller hands over the next batch before reading this
        one back, so the device never idles between batches.
        """
        n = len(batch)
        if n == 0:
            return lambda: np.zeros((0, self.width), np.float32)
        # Pad to a power of two so that a compiled function sees few distinct shapes.
        padded = 1 << (n - 1).bit_length()
        if padded != n:
            pad = np.zeros((padded - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        with self._lock:
            out = self._dispatch(batch)
            self.n_seen += n
        return lambda: np.asarray(out)[:n].astype(np.float32, copy=False)


_NETWORKS: dict[str, Network] = {}
_NETWORKS_LOCK = threading.Lock()


def get_network(config: BackboneConfig) -> Network:
    """Return the network for ``config``, building it on first use in this process."""
    # A model file loaded with safe_mode=False is not handed to an embedder that did not ask.
    key = config.fingerprint + ("" if config.safe_mode else ":unsafe")
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            net = Network(config, _build_model(config))
            _NETWORKS[key] = net
        return net


def clear_networks() -> None:
    """Forget every network built in this process (frees their memory)."""
    with _NETWORKS_LOCK:
        _NETWORKS.clear()


def _build_model(config: BackboneConfig) -> Any:
    with _dtype_policy(config.precision):
        return _build_model_as_is(config)


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy (mixed precision), restoring the global one."""
    if precision == "float32":
        yield
        return
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build_model_as_is(config: BackboneConfig) -> Any:
    import keras

    if config.kind == "registry":
        base = _build_registry_model(config, include_top=False)
        try:
            model = _cut(base, config.layer)
        except UnknownBackboneError:
            if config.layer is None or isinstance(config.layer, int):
                raise
            # The layer may belong to the classifier on top (e.g. VGG's 'fc2').
            top = _build_registry_model(config, include_top=True)
            model = _cut(top, config.layer)
    elif config.kind == "file":
        model = _cut(load_model_file(config.source, safe_mode=config.safe_mode), config.layer)
    elif config.kind == "model":
        model = _cut(config.source, config.layer)
    else:  # builder
        raise FeatxError("a builder backbone needs the sample shape; use get_builder_network")
    model = _pool(model, config.pooling)
    model.trainable = False
    if config.input_size and len(model.input_shape) == 4 and None in model.input_shape[1:3]:
        h, w = config.input_size
        inp = keras.Input((h, w, model.input_shape[-1]))
        model = keras.Model(inp, model(inp))
    return model


def get_builder_network(config: BackboneConfig, sample_shape: tuple[int, ...]) -> Network:
    """Return the network a builder function makes for samples of ``sample_shape``."""
    key = f"{config.fingerprint}:{sample_shape}"
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            try:
                with _seeded(), _dtype_policy(config.precision):
                    model = config.source(sample_shape)
            except Exception as exc:
                raise FeatxError(
                    f"the backbone function {config.name} could not build a network for samples "
                    f"of shape {sample_shape}: {exc}"
                ) from exc
            if not _is_keras_model(model):
                raise FeatxError(
                    f"the backbone function {config.name} returned {type(model).__name__}; "
                    "expected a keras.Model."
                )
            model = _pool(_cut(model, config.layer), config.pooling)
            model.trainable = False
            net = Network(config, model)
            _NETWORKS[key] = net
        return net


class _seeded:
    """Seed Keras for a deterministic random initialisation, restoring Python's and NumPy's RNGs."""

    def __enter__(self) -> None:
        import keras

        self._py = random.getstate()
        self._np = np.random.get_state()
        keras.utils.set_random_seed(0)

    def __exit__(self, *exc: object) -> None:
        random.setstate(self._py)
        np.random.set_state(self._np)


def _build_registry_model(config: BackboneConfig, *, include_top: bool) -> Any:
    import keras

    spec: BackboneSpec = config.source
    constructor = getattr(keras.applications, spec.constructor)
    assert config.input_size is not None
    if include_top:
        shape = (spec.input_size, spec.input_size, 3)
    else:
        shape = (*config.input_size, 3)
    kwargs: dict[str, Any] = {"include_top": include_top, "input_shape": shape}
    weights = config.weights
    kwargs["weights"] = str(weights) if isinstance(weights, os.PathLike) else weights
    try:
        if weights is None:
            with _seeded():
                return constructor(**kwargs)
        return constructor(**kwargs)
    except Exception as exc:  # Keras raises a bare Exception when a download fails
        if weights == "imagenet" and _is_download_failure(exc):
            from featx.weights import missing_weights_message

            raise WeightsNotFoundError(missing_weights_message(spec.name)) from exc
        if isinstance(exc, ValueError) and weights not in (None, "imagenet"):
            raise WeightsNotFoundError(
                f"the weights file {weights!r} does not fit {spec.constructor}"
                f"(include_top={include_top}): {exc}. A weights file for featx must hold the "
                "network without its classifier (include_top=False)."
            ) from exc
        raise


def _is_download_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OSError) or "fetch failure" in text or "url" in text


def load_model_file(path: str | os.PathLike[str], *, safe_mode: bool = True) -> Any:
    """Load a user's ``.keras``/``.h5`` model for inference (not compiled, safe mode by default).

    In Keras's safe mode a file cannot run Python code as it loads: a ``Lambda`` layer holding
    a Python function (whose bytecode would run) is refused with a :class:`FeatxError` that says
    how to opt in (``ImageEmbedder(..., safe_mode=False)``) for a file one trusts.

    Examples
    --------
    >>> from featx.backbones import load_model_file
    >>> load_model_file("missing.keras")
    Traceback (most recent call last):
    ...
    featx.exceptions.UnknownBackboneError: model file 'missing.keras' does not exist...
    """
    p = Path(path)
    if not p.is_file():
        raise UnknownBackboneError(f"model file {str(p)!r} does not exist. Check the path.")
    import keras

    try:
        return keras.models.load_model(p, compile=False, safe_mode=safe_mode)
    except Exception as exc:
        if safe_mode and "safe_mode" in str(exc):
            raise FeatxError(
                f"the Keras model {str(p)!r} holds Python code (a Lambda layer), which would run "
                "as the file loads; featx loads model files in Keras's safe mode, which refuses "
                "it. Only if you trust where this file comes from, pass "
                "ImageEmbedder(..., safe_mode=False) (or call "
                "keras.config.enable_unsafe_deserialization(), which opts in the whole process)."
            ) from exc
        raise FeatxError(
            f"could not load the Keras model {str(p)!r}: {exc}. Expected a model saved with "
            "model.save('model.keras') or model.save('model.h5')."
        ) from exc


def _cut(model: Any, layer: str | int | None) -> Any:
    import keras

    if layer is None:
        return model
    names = [lay.name for lay in model.layers]
    if isinstance(layer, int):
        if not -len(names) <= layer < len(names):
            raise UnknownBackboneError(
                f"layer index {layer} is out of range; the model has {len(names)} layers."
            )
        target = model.layers[layer]
    else:
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
            raise UnknownBackboneError(
                f"layer {layer!r} is not in model {model.name!r}{hint} "
                f"Its last layers are: {', '.join(names[-8:])}."
            )
        target = model.get_layer(layer)
    return keras.Model(model.inputs, target.output, name=f"{model.name}_cut")


def _pool(model: Any, pooling: str) -> Any:
    import keras

    if len(model.output_shape) == 2:
        return model
    if len(model.output_shape) != 4 and pooling in ("avg", "max"):
        out = keras.layers.Flatten()(model.output)
        return keras.Model(model.inputs, out)
    if pooling == "avg":
        out = keras.layers.GlobalAveragePooling2D()(model.output)
    elif pooling == "max":
        out = keras.layers.GlobalMaxPooling2D()(model.output)
    elif pooling == "flatten":
        out = keras.layers.Flatten()(model.output)
    else:
        return model
    return keras.Model(model.inputs, out)


def _graph_preprocess(mode: str) -> Callable[[Any], Any]:
    """The preprocessing ``mode`` as a function of a backend tensor (traceable, jit-able)."""
    if mode == "none":
        return lambda x: x
    if mode == "scale":
        return lambda x: x / 255.0
    if mode.startswith("keras.applications."):
        import importlib

        module = importlib.import_module(mode.rsplit(".", 1)[0])
        fn: Callable[[Any], Any] = module.preprocess_input
        return fn
    if mode in ("tf", "caffe", "torch"):
        from keras.applications import imagenet_utils

        return lambda x: imagenet_utils.preprocess_input(x, mode=mode)
    raise FeatxError(
        f"preprocess {mode!r} cannot be rebuilt in this process; pass the function itself as "
        "preprocess="
    )


def _compile_forward(
    model: Any, preprocess: Callable[[Any], Any] | None
) -> Callable[[np.ndarray], np.ndarray]:
    """Cast to float32, preprocess and run the model as one compiled function of a NumPy batch
    (never ``model.predict``); returns the output as a NumPy array."""
    dispatch = _compile_dispatch(model, preprocess)
    return lambda x: np.asarray(dispatch(x))


def _compile_dispatch(model: Any, preprocess: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """Like :func:`_compile_forward`, but returns the backend's own array, which JAX may still be
    computing (it dispatches asynchronously)."""
    import keras

    prep = preprocess or (lambda x: x)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(
            lambda x: model(prep(tf.cast(x, tf.float32)), training=False), reduce_retracing=True
        )
        return lambda x: fn(tf.convert_to_tensor(x))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def run(tv: Any, ntv: Any, x: Any) -> Any:
            y, _ = model.stateless_call(tv, ntv, prep(x.astype(jnp.float32)), training=False)
            return y

        return lambda x: run(trainable, frozen, x)
    if backend == "torch":
        import torch

        def run_torch(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                t = keras.ops.convert_to_tensor(x, dtype="float32")
                return keras.ops.convert_to_numpy(model(prep(t), training=False))

        return run_torch
    return lambda x: keras.ops.convert_to_numpy(
        model(prep(keras.ops.convert_to_tensor(x, dtype="float32")), training=False)
    )
