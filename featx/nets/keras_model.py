"""Keras networks: building, cutting and pooling a backbone, and its compiled forward pass.

:func:`keras_network` builds the Keras model for one or several cuts of a backbone
(:func:`build_model`) and wraps its compiled forward pass (``tf.function`` on TensorFlow,
``jax.jit`` on JAX, eager ``no_grad`` on PyTorch; never ``model.predict``) in a
:class:`~featx.nets.network.Network`. The OpenVINO engine converts the same model
(:mod:`featx.nets.openvino_engine`).

Keras (and with it the backend) is imported only when a network is built.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, UnknownBackboneError, WeightsNotFoundError
from featx.nets.backbones import BackboneConfig, BackboneSpec
from featx.nets.identity import import_named_module, is_keras_model
from featx.nets.network import Forward, Network

__all__ = [
    "base_model",
    "build_model",
    "cut_layer",
    "graph_preprocess",
    "graph_preprocess_of",
    "keras_network",
    "load_model_file",
    "model_shapes",
    "outputs_of",
]


def keras_network(configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None) -> Network:
    model = build_model(configs, sample_shape)
    shape, widths = model_shapes(model)
    forward = _keras_forward(model, graph_preprocess_of(configs[0]))
    net = Network(configs, shape, widths, forward, engine="keras")
    net.model = model  # type: ignore[attr-defined]
    return net


def model_shapes(model: Any) -> tuple[tuple[int, ...], list[int]]:
    shape = tuple(model.input_shape[1:])
    if any(d is None for d in shape):
        raise FeatxError(
            f"the model's input shape {model.input_shape} has unknown dimensions; pass "
            "input_size=(height, width) to say what size the images should be resized to."
        )
    outs = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    widths = []
    for out in outs:
        if len(out) != 2 or out[-1] is None:
            raise FeatxError(
                f"the cut model's output has shape {out}; expected (None, width). "
                "Choose pooling='avg', 'max' or 'flatten' for a spatial layer."
            )
        widths.append(int(out[-1]))
    return tuple(int(d) for d in shape), widths


def build_model(
    configs: BackboneConfig | list[BackboneConfig], sample_shape: tuple[int, ...] | None = None
) -> Any:
    """The Keras model: the backbone cut at each configuration's layer and pooled, frozen; one
    output per configuration (a single output for one configuration)."""
    import keras

    configs = [configs] if isinstance(configs, BackboneConfig) else configs
    config = configs[0]
    # Mixed precision is Keras's; OpenVINO converts the float32 network and runs it in bfloat16.
    precision = config.precision if config.engine == "keras" else "float32"
    with _dtype_policy(precision):
        if config.kind == "hub":  # a Keras Hub encoder: its tokens cut and pooled there
            from featx.nets.hub_model import build_hub_model

            model = build_hub_model(configs, _seeded)
            model.trainable = False
            return model
        base = base_model(config, sample_shape)
        outputs = []
        for c in configs:
            model = base
            try:
                cut = cut_layer(model, c.layer)
            except UnknownBackboneError:
                if config.kind != "registry" or c.layer is None or isinstance(c.layer, int):
                    raise
                # The layer may belong to the classifier on top (e.g. VGG's 'fc2').
                model = _registry_model(config, include_top=True)
                cut = cut_layer(model, c.layer)
            outputs.append(_pool(cut, c.pooling))
    if len(outputs) == 1:
        model = outputs[0]
    else:
        inputs = {id(m.inputs[0]) for m in outputs}
        if len(inputs) != 1:  # a classifier layer: several graphs, one input
            inp = keras.Input(outputs[0].input_shape[1:])
            model = keras.Model(inp, [m(inp) for m in outputs])
        else:
            model = keras.Model(outputs[0].inputs, [m.outputs[0] for m in outputs])
    model.trainable = False
    if config.input_size and len(model.input_shape) == 4 and None in model.input_shape[1:3]:
        h, w = config.input_size
        inp = keras.Input((h, w, model.input_shape[-1]))
        model = keras.Model(inp, model(inp))
    return model


def base_model(config: BackboneConfig, sample_shape: tuple[int, ...] | None) -> Any:
    if config.kind == "registry":
        return _registry_model(config, include_top=False)
    if config.kind == "file":
        return load_model_file(config.source, safe_mode=config.safe_mode)
    if config.kind == "model":
        return config.source
    if config.kind == "hub":
        raise FeatxError(
            f"{config.name} is a Keras Hub encoder, which featx builds cut and pooled in one "
            "piece (build_model); fine-tuning one is not supported yet. Expected a registry "
            "backbone or a model file."
        )
    assert sample_shape is not None
    try:
        with _seeded():
            model = config.source(sample_shape)
    except Exception as exc:
        raise FeatxError(
            f"the backbone function {config.name} could not build a network for samples "
            f"of shape {sample_shape}: {exc}"
        ) from exc
    if not is_keras_model(model):
        raise FeatxError(
            f"the backbone function {config.name} returned {type(model).__name__}; "
            "expected a keras.Model."
        )
    return model


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


def _registry_model(config: BackboneConfig, *, include_top: bool) -> Any:
    import keras

    spec: BackboneSpec = config.source
    if ":" in spec.constructor:  # a network featx defines (EfficientNet-Lite)
        module_name, _, function = spec.constructor.partition(":")
        constructor = getattr(import_named_module(module_name), function)
    else:
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
        if isinstance(exc, FeatxError):  # featx's own constructors explain themselves
            raise
        if weights == "imagenet" and _is_download_failure(exc):
            from featx._home import missing_weights_message

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
    >>> from featx.nets.keras_model import load_model_file
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


def cut_layer(model: Any, layer: str | int | None) -> Any:
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


def graph_preprocess_of(config: BackboneConfig) -> Callable[[Any], Any] | None:
    """The preprocessing that runs inside the compiled function (None: a NumPy one runs first)."""
    if config.preprocess_fn is not None:
        return None
    if config.kind == "hub" and config.preprocess == "keras_hub.image_converter":
        from featx.nets.hub_model import converter_preprocess

        return converter_preprocess(config)
    return graph_preprocess(config.preprocess)


def graph_preprocess(mode: str) -> Callable[[Any], Any]:
    """The preprocessing ``mode`` as a function of a backend tensor (traceable, jit-able)."""
    if mode == "none":
        return lambda x: x
    if mode == "scale":
        return lambda x: x / 255.0
    if mode.startswith(("keras.applications.", "featx.")):
        module = import_named_module(mode.rsplit(".", 1)[0])
        fn: Callable[[Any], Any] = module.preprocess_input
        return fn
    if mode in ("tf", "caffe", "torch"):
        from keras.applications import imagenet_utils

        return lambda x: imagenet_utils.preprocess_input(x, mode=mode)
    raise FeatxError(
        f"preprocess {mode!r} cannot be rebuilt in this process; pass the function itself as "
        "preprocess="
    )


def outputs_of(y: Any) -> list[Any]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _keras_forward(model: Any, preprocess: Callable[[Any], Any] | None) -> Forward:
    """Cast to float32, preprocess and run the model as one compiled function of a NumPy batch
    (never ``model.predict``). The returned forward starts the computation; JAX may still be
    computing when it returns (it dispatches asynchronously)."""
    import keras

    prep = preprocess or (lambda x: x)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(
            lambda x: model(prep(tf.cast(x, tf.float32)), training=False), reduce_retracing=True
        )

        def run_tf(x: np.ndarray) -> Callable[[], list[Any]]:
            y = outputs_of(fn(tf.convert_to_tensor(x)))
            return lambda: y

        return run_tf
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def run(tv: Any, ntv: Any, x: Any) -> Any:
            y, _ = model.stateless_call(tv, ntv, prep(x.astype(jnp.float32)), training=False)
            return y

        def run_jax(x: np.ndarray) -> Callable[[], list[Any]]:
            y = outputs_of(run(trainable, frozen, x))
            return lambda: y

        return run_jax

    def run_eager(x: np.ndarray) -> Callable[[], list[Any]]:
        if backend == "torch":
            import torch

            context: Any = torch.no_grad()
        else:
            context = contextlib.nullcontext()
        with context:
            t = keras.ops.convert_to_tensor(x, dtype="float32")
            y = [keras.ops.convert_to_numpy(o) for o in outputs_of(model(prep(t), training=False))]
        return lambda: y

    return run_eager


def _compile_forward(
    model: Any, preprocess: Callable[[Any], Any] | None
) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras forward pass as a plain function of a NumPy batch (the first output)."""
    forward = _keras_forward(model, preprocess)
    return lambda x: np.asarray(forward(x)()[0])
