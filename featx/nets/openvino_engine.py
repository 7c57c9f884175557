"""The OpenVINO engine: a Keras network converted, kept on disk, and run on the CPU.

:func:`openvino_network` converts the cut, pooled network together with its preprocessing (a
``tf.function`` taking float32 pixels) with ``openvino.convert_model``, keeps the converted model
under ``featx_home()/openvino`` keyed by the fingerprint, and returns a
:class:`~featx.nets.keras_model.Network` whose forward pass runs OpenVINO's CPU plugin in float32 or
bfloat16 (``INFERENCE_PRECISION_HINT`` is always set: the plugin otherwise picks bfloat16 on CPUs
that have it). A later process reads the converted model from disk without building the Keras
model or importing TensorFlow. :mod:`featx.nets.keras_model` calls it for ``engine="openvino"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from featx.nets.backbones import BackboneConfig, openvino_version
from featx.nets.keras_model import build_model, graph_preprocess_of, model_shapes, outputs_of
from featx.nets.network import Forward, Network

__all__ = ["openvino_network", "openvino_options", "NotConvertible"]




class NotConvertible(Exception):
    """OpenVINO could not take this network (the message says why)."""


#: OpenVINO's inference precision per featx precision.
_OPENVINO_PRECISION = {"float32": "f32", "mixed_bfloat16": "bf16", "int8": "f32"}


def openvino_network(
    configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None
) -> Network:
    config = configs[0]
    try:
        import openvino as ov
    except ImportError as exc:
        raise NotConvertible(
            "OpenVINO is not installed (pip install openvino; it ships wheels for x86-64 and "
            "arm64 Linux, Windows and macOS)"
        ) from exc
    core = _openvino_core()
    options = openvino_options(config)
    # Decoded images arrive as uint8 (a quarter of the bytes), other input as float32.
    dtype = "uint8" if config.input_size and config.preprocess_fn is None else "float32"
    path = _openvino_path(configs, sample_shape)
    ov_model = compiled = None
    if path is not None and path.is_file():
        try:
            ov_model = core.read_model(str(path))
            compiled = _compile_variant(core, ov_model, dtype, options)
        except Exception:
            # A damaged or foreign file: rebuilt below, never a crash.
            ov_model = compiled = None
            _remove_openvino_files(path)
    if ov_model is None:
        ov_model = (_quantized(configs, sample_shape) if config.precision == "int8"
                    else _convert(configs, sample_shape))
        # Compiled before it is kept, so that a model the plugin refuses never reaches the disk.
        try:
            compiled = _compile_variant(core, ov_model, dtype, options)
        except Exception as exc:
            raise NotConvertible(
                f"OpenVINO converted the network but its CPU plugin refused it: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            ) from exc
        _keep(ov, ov_model, path, config)
    shape = tuple(int(d.get_length()) for d in list(ov_model.inputs[0].get_partial_shape())[1:])
    widths = [int(list(o.get_partial_shape())[-1].get_length()) for o in ov_model.outputs]
    forward = _openvino_forward(core, ov_model, options, {dtype: compiled})
    return Network(configs, shape, widths, forward, engine="openvino")


def _quantized(configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None) -> Any:
    """The INT8 model: the float32 converted model (from disk, or converted and kept), quantized
    by NNCF on the calibration images of ``configs[0].calibration_id``."""
    import openvino as ov

    from featx.nets.quantize import quantize

    floats = [replace(c, precision="float32", calibration_id="") for c in configs]
    path = _openvino_path(floats, sample_shape)
    ov_model = None
    if path is not None and path.is_file():
        with contextlib.suppress(Exception):
            ov_model = _openvino_core().read_model(str(path))
    if ov_model is None:
        ov_model = _convert(floats, sample_shape)
        _keep(ov, ov_model, path, configs[0])
    return quantize(ov_model, configs[0].calibration_id)


def _keep(ov: Any, ov_model: Any, path: Path | None, config: BackboneConfig) -> None:
    """Keep the converted model at ``path``, only when the model file loaded in safe mode: a
    later process reads the converted model without loading the file, so it must not skip the
    file's refusal."""
    if path is not None and config.safe_mode and not _keras_unsafe_switch_on():
        _save_openvino_model(ov, ov_model, path)


def _keras_unsafe_switch_on() -> bool:
    """Whether ``keras.config.enable_unsafe_deserialization()`` opted the process out of safe
    mode (Keras has no public getter)."""
    try:
        from keras.src.saving import serialization_lib
    except ImportError:  # pragma: no cover - a Keras without it: assume the worst
        return True
    return serialization_lib.in_safe_mode() is False


def openvino_options(config: BackboneConfig) -> dict[str, str]:
    """The CPU plugin's settings: ``config``'s precision, and one stream whose threads are the
    cores this process may use (OpenVINO follows ``os.sched_getaffinity``, as featx's decode
    threads do). Measured against 15 other splits of decode threads, inference threads and
    streams (``benchmarks/threads.py``, 2 cores): within 0.94-0.97x of the best in float32,
    bfloat16 and INT8, the spread between runs."""
    return {
        "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[config.precision],
        "PERFORMANCE_HINT": "LATENCY",
    }


_CORE: Any = None


def _openvino_core() -> Any:
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def _openvino_path(
    configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None
) -> Path | None:
    """Where the converted model is kept, or None for a backbone function (whose code featx
    cannot fingerprint, so a stale file could come back)."""
    if configs[0].kind == "builder":
        return None
    from featx._home import featx_home

    identity = {
        "outputs": [c.fingerprint_fields for c in configs],
        "openvino": openvino_version(),
        "numpy_preprocess": configs[0].preprocess_fn is not None,
        # A file loaded with safe_mode=False must not reach a safe-mode embedder from disk.
        "safe_mode": configs[0].safe_mode,
        "sample_shape": list(sample_shape) if sample_shape else None,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return featx_home() / "openvino" / f"{digest}.xml"


def _save_openvino_model(ov: Any, ov_model: Any, path: Path) -> None:
    """Write the model's .xml and .bin so that a reader never sees a half-written pair: both are
    written to a temporary folder, then the .bin and last the .xml are renamed into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        try:
            ov.save_model(ov_model, str(tmp / path.name), compress_to_fp16=False)
            os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(tmp / path.name, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only home: the model is converted again next time


def _remove_openvino_files(path: Path) -> None:
    for p in (path, path.with_suffix(".bin")):
        with contextlib.suppress(OSError):
            p.unlink()


def _convert(configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None) -> Any:
    """Convert the Keras network, with the cast to float32 and the preprocessing inside."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise NotConvertible(
            f"OpenVINO converts TensorFlow-backend Keras models, and Keras runs on "
            f"{keras.backend.backend()!r} here (set KERAS_BACKEND=tensorflow)"
        )
    import openvino as ov
    import tensorflow as tf

    model = build_model(configs, sample_shape)
    shape, _ = model_shapes(model)
    prep = graph_preprocess_of(configs[0]) or (lambda x: x)

    def forward(x: Any) -> Any:
        return tuple(outputs_of(model(prep(x), training=False)))

    fn = tf.function(forward, input_signature=[tf.TensorSpec([None, *shape], tf.float32)])
    try:
        return ov.convert_model(fn)
    except Exception as exc:
        raise NotConvertible(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


def _compile_variant(core: Any, ov_model: Any, dtype: str, options: dict[str, str]) -> Any:
    """Compile the converted model (float32 input) for batches of ``dtype``: a uint8 variant
    converts its input inside the plugin."""
    import openvino as ov

    model = ov_model
    if dtype == "uint8":
        ppp = ov.preprocess.PrePostProcessor(ov_model.clone())  # build() changes its model
        ppp.input().tensor().set_element_type(ov.Type.u8)
        model = ppp.build()
    return core.compile_model(model, "CPU", options)


def _openvino_forward(
    core: Any, ov_model: Any, options: dict[str, str], compiled: dict[str, Any]
) -> Forward:
    """Asynchronous inference: each batch gets an idle infer request (made on demand), started
    without waiting; the returned function waits for it and copies its outputs out.

    The converted model takes float32; uint8 batches (decoded images) run a variant whose input
    is uint8. Each variant is compiled on first use (``compiled`` may hold one already).
    """
    idle: dict[str, list[Any]] = {dtype: [] for dtype in compiled}
    lock = threading.Lock()
    n_outputs = len(ov_model.outputs)

    def request_for(dtype: str) -> Any:
        with lock:
            if dtype not in compiled:
                compiled[dtype] = _compile_variant(core, ov_model, dtype, options)
                idle[dtype] = []
            pool = idle[dtype]
            return pool.pop() if pool else compiled[dtype].create_infer_request()

    def run(x: np.ndarray) -> Callable[[], list[np.ndarray]]:
        dtype = "uint8" if x.dtype == np.uint8 else "float32"
        x = np.ascontiguousarray(x if dtype == "uint8" else x.astype(np.float32, copy=False))
        request = request_for(dtype)
        request.start_async({0: x})

        def wait() -> list[np.ndarray]:
            try:
                request.wait()
                return [request.get_output_tensor(i).data.copy() for i in range(n_outputs)]
            finally:
                with lock:
                    idle[dtype].append(request)

        return wait

    return run
