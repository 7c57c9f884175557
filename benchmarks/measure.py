"""One benchmark measurement, run in a fresh process so that its peak memory is its own.

    python -m benchmarks.measure METHOD --backbone NAME --folder DIR --n N [--cache FILE]
        [--precision float32|mixed_float16|mixed_bfloat16|int8] [--batch-size 32]
        [--engine auto|keras|openvino]

Prints one JSON line: {"method", "backbone", "images", "seconds", "images_per_s", "peak_rss_mb"},
or {"method", "backbone", "skipped": reason} when the method cannot run here (the Keras pipeline
needs TensorFlow, which the JAX-only GPU machines lack). The network is built and warmed up before
the clock starts, in every method alike; the run is repeated and the fastest repeat is reported
(machine noise only ever slows a run down).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SIZE = 224


@functools.cache
def _weights(backbone: str) -> str | None:
    """ImageNet weights where they are installed (offline: mobilenet only), else random ones:
    speed does not depend on the values."""
    if backbone != "mobilenet":
        return None
    from featx.weights import installed_weights

    return "imagenet" if any(r["backbone"] == "mobilenet" and r["present"]
                             for r in installed_weights()) else None


def _keras_model(backbone: str, precision: str) -> Any:
    from featx.nets.backbones import resolve_backbone
    from featx.nets.keras_model import build_model

    return build_model(resolve_backbone(backbone, weights=_weights(backbone), input_size=SIZE,
                                         precision=precision))


def _preprocess(backbone: str) -> Any:
    import importlib

    from featx.nets.backbones import get_backbone

    module = importlib.import_module(f"keras.applications.{get_backbone(backbone).module}")
    return module.preprocess_input


def _paths(folder: str, n: int) -> list[str]:
    files = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    if len(files) < n:
        raise SystemExit(f"{folder} has {len(files)} photos; {n} needed")
    return files[:n]


def _warm_sizes(n: int, batch: int) -> list[int]:
    """The batch sizes a run of ``n`` images meets: each is traced/compiled before the clock."""
    return [batch] + ([n % batch] if n % batch else [])


def ceiling(backbone: str, paths: list[str], batch: int, precision: str, **_: Any) -> Any:
    """The compiled network alone, on tensors already decoded, resized and preprocessed."""
    from featx.embed.images import Item, load_pixels
    from featx.nets.keras_model import _compile_forward

    model = _keras_model(backbone, precision)
    forward = _compile_forward(model, None)
    pre = _preprocess(backbone)
    x = np.stack([load_pixels(Item("path", p, p), (SIZE, SIZE)) for p in paths])
    x = np.asarray(pre(x), np.float32)
    for size in _warm_sizes(len(x), batch):
        forward(x[:size])

    def run() -> None:
        for i in range(0, len(x), batch):
            forward(x[i : i + batch])

    return run


def openvino_ceiling(backbone: str, paths: list[str], batch: int, precision: str,
                     **_: Any) -> Any:
    """OpenVINO alone: the float32 Keras network converted as it is (no preprocessing inside),
    compiled for the CPU in ``precision``, on tensors already decoded, resized and preprocessed."""
    try:
        import openvino as ov
    except ImportError:
        raise Skipped("OpenVINO is not installed") from None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise Skipped("OpenVINO converts TensorFlow-backend Keras models")
    model = _keras_model(backbone, "float32")
    hint = {"float32": "f32", "mixed_bfloat16": "bf16", "int8": "f32"}.get(precision)
    if hint is None:
        raise Skipped(f"OpenVINO's CPU plugin does not run {precision}")
    pre = _preprocess(backbone)
    x = np.stack([load_pixels_224(p) for p in paths])
    x = np.ascontiguousarray(pre(x.astype(np.float32)), np.float32)
    ov_model = ov.convert_model(model)
    if precision == "int8":  # NNCF as featx runs it: the first 300 images, one at a time
        try:
            import nncf
        except ImportError:
            raise Skipped("NNCF is not installed (pip install 'featx[int8]')") from None
        ov_model = nncf.quantize(ov_model, nncf.Dataset([x[i:i + 1] for i in range(300)]),
                                 subset_size=300, fast_bias_correction=False)
    compiled = ov.Core().compile_model(
        ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    for size in _warm_sizes(len(x), batch):
        request.infer({0: x[:size]})

    def run() -> None:
        for i in range(0, len(x), batch):
            request.infer({0: x[i : i + batch]})

    return run


def load_pixels_224(path: str) -> np.ndarray:
    from featx.embed.images import Item, load_pixels

    return load_pixels(Item("path", path, path), (SIZE, SIZE))


def naive_loop(backbone: str, paths: list[str], precision: str, **_: Any) -> Any:
    """One model.predict call per image, as simple embedding wrappers do."""
    import keras

    model = _keras_model(backbone, precision)
    pre = _preprocess(backbone)
    model.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)

    def run() -> None:
        for p in paths:
            img = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE)))
            model.predict(pre(img[None]), verbose=0)

    return run


def all_in_memory(backbone: str, paths: list[str], batch: int, precision: str,
                  **_: Any) -> Any:
    """The tutorials' way: load every image into one array, then one model.predict."""
    import keras

    model = _keras_model(backbone, precision)
    pre = _preprocess(backbone)
    model.predict(np.zeros((batch, SIZE, SIZE, 3), np.float32), verbose=0, batch_size=batch)

    def run() -> None:
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE)))
                      for p in paths])
        model.predict(pre(x), verbose=0, batch_size=batch)

    return run


def keras_pipeline(backbone: str, paths: list[str], folder: str, batch: int, precision: str,
                   **_: Any) -> Any:
    """image_dataset_from_directory + map(preprocess_input) + prefetch + predict."""
    dataset = _keras_dataset(backbone, folder, len(paths), batch)
    model = _keras_model(backbone, precision)
    model.predict(np.zeros((batch, SIZE, SIZE, 3), np.float32), verbose=0, batch_size=batch)

    def run() -> None:
        model.predict(dataset(), verbose=0)

    return run


def _keras_dataset(backbone: str, folder: str, n: int, batch: int) -> Any:
    """A function building the Keras pipeline's tf.data part afresh: decode, resize (bilinear,
    not antialiased), map(preprocess_input), prefetch."""
    import keras

    try:
        import tensorflow as tf
    except ImportError:
        raise Skipped("the Keras pipeline needs TensorFlow (tf.data), not installed here") from None
    pre = _preprocess(backbone)

    def build() -> Any:
        ds = keras.utils.image_dataset_from_directory(
            folder, labels=None, image_size=(SIZE, SIZE), batch_size=batch, shuffle=False,
            verbose=False,
        )
        ds = ds.take((n + batch - 1) // batch)
        return ds.map(pre, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    return build


def featx_run(
    backbone: str, paths: list[str], batch: int, precision: str, cache: str | None = None,
    full: bool = False, engine: str = "auto", **_: Any
) -> Any:
    """featx's ImageEmbedder from the JPEG files (with a cache when given)."""
    from featx import ImageEmbedder

    warm = np.stack([load_pixels_224(paths[0])] * batch)
    options: dict[str, Any] = dict(weights=_weights(backbone), input_size=SIZE,
                                   precision=precision, batch_size=batch, engine=engine)
    if precision == "int8":  # calibrated once, on the first 300 photos, like the ceiling
        options["calibration"] = paths[:300]
    warming = ImageEmbedder(backbone, **options).fit(paths)
    for size in _warm_sizes(len(paths), batch):
        warming.transform(warm[:size])
    # Fitted before the clock: fit checks the parameters and, for int8, calibrates (a one-off,
    # like the conversion the warm-up pays for).
    emb = ImageEmbedder(backbone, cache=cache, **options).fit(paths)

    def run() -> None:
        if cache and not full:  # every repeat starts from an empty cache
            for leftover in Path(cache).parent.glob(Path(cache).name + "*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        out = emb.transform(paths)
        assert out.shape[0] == len(paths)

    return run


def featx_pixels(backbone: str, paths: list[str], decoder: str = "auto", **_: Any) -> Any:
    """featx's loading alone, no network: read, decode and resize (antialiased) with
    ``decoder`` (fast: simplejpeg + OpenCV; pillow: draft mode + BILINEAR), in featx's default
    number of threads."""
    from concurrent.futures import ThreadPoolExecutor

    from featx.embed.engine import default_workers
    from featx.embed.images import Item, load_pixels

    def load(path: str) -> np.ndarray:
        return load_pixels(Item("path", path, path), (SIZE, SIZE), decoder=decoder)

    def run() -> None:
        with ThreadPoolExecutor(default_workers()) as pool:
            for _ in pool.map(load, paths):
                pass

    return run


def keras_pixels(backbone: str, paths: list[str], folder: str, batch: int, **_: Any) -> Any:
    """The Keras pipeline's tf.data part alone, no network."""
    dataset = _keras_dataset(backbone, folder, len(paths), batch)

    def run() -> None:
        for _ in dataset():
            pass

    return run


class Skipped(Exception):
    """This method cannot run on this machine; the reason goes into the table."""


METHODS = {
    "ceiling": ceiling,
    "openvino_ceiling": openvino_ceiling,
    "naive": naive_loop,
    "in_memory": all_in_memory,
    "keras_pipeline": keras_pipeline,
    "featx": featx_run,
    "featx_pixels": featx_pixels,
    "keras_pixels": keras_pixels,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(METHODS))
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--full-cache", action="store_true",
                        help="fill the cache first; time transforms that find every image")
    parser.add_argument("--repeats", type=int, default=3, help="report the fastest of these")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_float16", "mixed_bfloat16", "int8"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--engine", default="auto", choices=["auto", "keras", "openvino"])
    parser.add_argument("--decoder", default="auto", choices=["auto", "fast", "pillow"])
    args = parser.parse_args(argv)
    paths = _paths(args.folder, args.n)
    try:
        run = METHODS[args.method](
            args.backbone, paths, folder=args.folder, cache=args.cache, full=args.full_cache,
            batch=args.batch_size, precision=args.precision, engine=args.engine,
            decoder=args.decoder,
        )
    except Skipped as why:
        print(json.dumps({"method": args.method, "backbone": args.backbone, "skipped": str(why)}))
        return 0
    if args.full_cache:
        run()
    times = []  # (wall seconds, CPU seconds of all the process's threads)
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    seconds, cpu = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "method": args.method, "backbone": args.backbone, "images": len(paths),
        "seconds": seconds, "images_per_s": len(paths) / seconds, "peak_rss_mb": peak,
        "cpu_ms_per_image": cpu / len(paths) * 1e3, "weights": _weights(args.backbone) or "random",
    }))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
