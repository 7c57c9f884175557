"""One benchmark measurement, run in a fresh process so that its peak memory is its own.

    python -m benchmarks.measure METHOD --backbone NAME --folder DIR --n N [--cache FILE]

Prints one JSON line: {"method", "backbone", "images", "seconds", "images_per_s", "peak_rss_mb"}.
The network is built and warmed up before the clock starts, in every method alike; the run is
repeated and the fastest repeat is reported (machine noise only ever slows a run down).
"""

from __future__ import annotations

import argparse
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
BATCH = 32


def _weights(backbone: str) -> str | None:
    # ImageNet weights are installed offline for mobilenet only; speed does not depend on them.
    return "imagenet" if backbone == "mobilenet" else None


def _keras_model(backbone: str) -> Any:
    from featx.backbones import _build_model, resolve_backbone

    return _build_model(resolve_backbone(backbone, weights=_weights(backbone), input_size=SIZE))


def _preprocess(backbone: str) -> Any:
    import importlib

    from featx.backbones import get_backbone

    module = importlib.import_module(f"keras.applications.{get_backbone(backbone).module}")
    return module.preprocess_input


def _paths(folder: str, n: int) -> list[str]:
    files = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    if len(files) < n:
        raise SystemExit(f"{folder} has {len(files)} photos; {n} needed")
    return files[:n]


def ceiling(backbone: str, paths: list[str], **_: Any) -> Any:
    """The compiled network alone, on tensors already decoded, resized and preprocessed."""
    from featx.backbones import _compile_forward
    from featx.images import Item, load_pixels

    model = _keras_model(backbone)
    forward = _compile_forward(model, None)
    pre = _preprocess(backbone)
    x = np.stack([load_pixels(Item("path", p, p), (SIZE, SIZE)) for p in paths])
    x = np.asarray(pre(x), np.float32)
    forward(x[:BATCH])

    def run() -> None:
        for i in range(0, len(x), BATCH):
            forward(x[i : i + BATCH])

    return run


def naive_loop(backbone: str, paths: list[str], **_: Any) -> Any:
    """One model.predict call per image, as simple embedding wrappers do."""
    import keras

    model = _keras_model(backbone)
    pre = _preprocess(backbone)
    model.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)

    def run() -> None:
        for p in paths:
            img = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE)))
            model.predict(pre(img[None]), verbose=0)

    return run


def all_in_memory(backbone: str, paths: list[str], **_: Any) -> Any:
    """The tutorials' way: load every image into one array, then one model.predict."""
    import keras

    model = _keras_model(backbone)
    pre = _preprocess(backbone)
    model.predict(np.zeros((BATCH, SIZE, SIZE, 3), np.float32), verbose=0, batch_size=BATCH)

    def run() -> None:
        x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE)))
                      for p in paths])
        model.predict(pre(x), verbose=0, batch_size=BATCH)

    return run


def keras_pipeline(backbone: str, paths: list[str], folder: str, **_: Any) -> Any:
    """image_dataset_from_directory + map(preprocess_input) + prefetch + predict."""
    import keras
    import tensorflow as tf

    model = _keras_model(backbone)
    pre = _preprocess(backbone)
    model.predict(np.zeros((BATCH, SIZE, SIZE, 3), np.float32), verbose=0, batch_size=BATCH)

    def run() -> None:
        ds = keras.utils.image_dataset_from_directory(
            folder, labels=None, image_size=(SIZE, SIZE), batch_size=BATCH, shuffle=False,
            verbose=False,
        )
        ds = ds.take((len(paths) + BATCH - 1) // BATCH)
        ds = ds.map(pre, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        model.predict(ds, verbose=0)

    return run


def featx_run(
    backbone: str, paths: list[str], cache: str | None = None, full: bool = False, **_: Any
) -> Any:
    """featx's ImageEmbedder from the JPEG files (with a cache when given)."""
    from featx import ImageEmbedder
    from featx.images import Item, load_pixels

    warm = np.stack([load_pixels(Item("path", paths[0], ""), (SIZE, SIZE))] * 2).astype(np.uint8)
    ImageEmbedder(backbone, weights=_weights(backbone), input_size=SIZE).fit_transform(warm)
    emb = ImageEmbedder(backbone, weights=_weights(backbone), input_size=SIZE, cache=cache)

    def run() -> None:
        if cache and not full:  # every repeat starts from an empty cache
            for leftover in Path(cache).parent.glob(Path(cache).name + "*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        out = emb.fit_transform(paths)
        assert out.shape[0] == len(paths)

    return run


METHODS = {
    "ceiling": ceiling,
    "naive": naive_loop,
    "in_memory": all_in_memory,
    "keras_pipeline": keras_pipeline,
    "featx": featx_run,
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
    args = parser.parse_args(argv)
    paths = _paths(args.folder, args.n)
    run = METHODS[args.method](
        args.backbone, paths, folder=args.folder, cache=args.cache, full=args.full_cache
    )
    if args.full_cache:
        run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "method": args.method, "backbone": args.backbone, "images": len(paths),
        "seconds": seconds, "images_per_s": len(paths) / seconds, "peak_rss_mb": peak,
    }))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
