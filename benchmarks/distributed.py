"""featx on Ray: its overhead on this machine, its scaling, and the driver's commit rate.

    .venv/bin/python -m benchmarks.distributed [--images 2000] [--sleep 0.5] [--batches 64]
        [--parts overhead,scaling,writer] [--writer-rows 40000]

1. Overhead: the same JPEG photos (benchmarks/photos.py) embedded by single-process featx
   (ImageEmbedder, empty cache) and by ``embed_on_ray`` with 1 worker (2 CPUs) and with 2 workers
   (1 CPU each) on a local cluster, mobilenet (ImageNet) at 224 px. The network is built and
   warmed up before the clock in every method alike (``warm_up=True`` for Ray, whose start-up,
   actors and network included, is reported on its own).
2. Scaling: a network whose forward pass is a fixed sleep (no CPU) on tiny PNGs, 1, 2, 4 and 8
   workers (one logical CPU each) on the same job: parallel efficiency T1 / (N x TN), actor
   start-up, per-batch overhead (beyond the sleep) and the driver's commit rate.
3. The driver's cache writer alone: rows/s it commits when shards of mobilenet-width rows arrive
   as fast as it takes them.

Prints the tables and writes them to benchmarks/results/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: Seconds the sleeping network's forward pass takes per batch (set by --sleep; read by workers
#: through the environment).
SLEEP_ENV = "FEATX_BENCH_SLEEP"


def sleepy_network(shape: tuple[int, ...]) -> Any:
    """A network whose forward pass is a fixed sleep: it averages the pixels, after sleeping
    ``$FEATX_BENCH_SLEEP`` seconds per batch in a ``tf.numpy_function`` (no CPU used)."""
    import keras
    import tensorflow as tf

    seconds = float(os.environ.get(SLEEP_ENV, "0.5"))

    def nap(x: np.ndarray) -> np.ndarray:
        time.sleep(seconds)
        return x

    class Sleep(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            y = tf.numpy_function(nap, [x], tf.float32)
            y.set_shape(x.shape)
            return y

    inp = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inp)
    return keras.Model(inp, Sleep()(x))


def _single(paths: list[str], cache: Path) -> float:
    from featx import ImageEmbedder

    ImageEmbedder("mobilenet", cache=str(cache.with_suffix(".warm.h5"))).transform(paths[:32])
    emb = ImageEmbedder("mobilenet", cache=str(cache))
    t0 = time.perf_counter()
    emb.transform(paths)
    seconds = time.perf_counter() - t0
    assert emb.report_.n_embedded == len(paths), emb.report_.summary()
    return seconds


def _on_ray(paths: list[str], embedder: Any, **kw: Any) -> Any:
    from featx.distributed import embed_on_ray

    report = embed_on_ray(paths, embedder, warm_up=True, **kw)
    assert report.n_embedded == len(paths) and not report.n_failed, report.summary()
    return report


def _writer_rate(tmp: Path, rows: int = 40_000, shard: int = 256, width: int = 1024) -> float:
    """Rows/s the engine's cache writer commits when shards arrive as fast as it takes them."""
    from featx.cache.store import EmbeddingCache
    from featx.cache.writer import CacheWriter
    from featx.nets.backbones import resolve_backbone

    config = resolve_backbone("mobilenet")
    writer = CacheWriter(EmbeddingCache(tmp / "writer.h5"), config.fingerprint, config)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(shard, width)).astype(np.float32)
    t0 = time.perf_counter()
    for start in range(0, rows, shard):
        keys = [f"{i:064x}" for i in range(start, start + shard)]
        writer.put(keys, vectors, keys, [])
    writer.close()
    return rows / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds per batch (scaling)")
    parser.add_argument("--batches", type=int, default=64, help="batches of 32 (scaling)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (scaling)")
    parser.add_argument("--writer-rows", type=int, default=40_000,
                        help="rows the driver's writer commits (writer)")
    parser.add_argument("--parts", default="overhead,scaling,writer",
                        help="which measurements to run")
    args = parser.parse_args(argv)
    os.environ[SLEEP_ENV] = str(args.sleep)

    import logging

    import ray
    from PIL import Image

    from benchmarks.photos import make_photo_folder
    from featx import ImageEmbedder

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="featx-ray-bench-"))
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        photos = make_photo_folder(Path(tempfile.gettempdir()) / "featx-bench-photos",
                                   args.images)
        # ---- 1. overhead ------------------------------------------------------------------
        parts = args.parts.split(",")
        single = _single(photos, tmp / "single.h5") if "overhead" in parts else 1.0
        t0 = time.perf_counter()
        ray.init(num_cpus=8, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        cluster_start = time.perf_counter() - t0
        rows = []
        for n, cpus in ((1, 2.0), (2, 1.0)) if "overhead" in parts else ():
            emb = ImageEmbedder("mobilenet", cache=str(tmp / f"ray{n}.h5"))
            rep = _on_ray(photos, emb, workers=n, cpus_per_worker=cpus)
            rows.append((n, cpus, rep))
        if "overhead" in parts:
            out(f"#### Overhead: {args.images} JPEG photos, mobilenet 224 px, this machine "
                f"({os.cpu_count()} cores)")
            out()
            out("| method | images/s | vs single process | actor start-up (s) | "
                "with start-up: vs single process |")
            out("|---|---:|---:|---:|---:|")
            out(f"| single-process featx | {args.images / single:.1f} | 1.00x | | |")
            for n, cpus, rep in rows:
                out(f"| Ray, {n} worker{'s' if n > 1 else ''} x {cpus:g} CPU | "
                    f"{args.images / rep.embed_seconds:.1f} | "
                    f"**{single / rep.embed_seconds:.2f}x** | "
                    f"{rep.startup_seconds:.1f} | "
                    f"{single / (rep.embed_seconds + rep.startup_seconds):.2f}x |")
            out()
            out(f"Starting the local cluster (ray.init, once per session): {cluster_start:.1f} s.")
            out()
        # ---- 2. scaling -------------------------------------------------------------------
        folder = tmp / "tiny"
        folder.mkdir()
        rng = np.random.default_rng(0)
        n_items = args.batches * 32
        for i in range(n_items):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                folder / f"t{i:05d}.png")
        tiny = sorted(str(p) for p in folder.iterdir())
        scaling = []
        for n in [int(w) for w in args.workers.split(",")] if "scaling" in parts else []:
            emb = ImageEmbedder(sleepy_network, input_size=16, engine="keras", batch_size=32,
                                cache=str(tmp / f"sleep{n}.h5"))
            rep = _on_ray(tiny, emb, workers=n, cpus_per_worker=1.0)
            scaling.append((n, rep))
        if scaling:
            t1 = scaling[0][1].embed_seconds * scaling[0][0] if scaling else 1.0
            ideal = args.batches * args.sleep
            out(f"#### Scaling: {n_items} tiny PNGs, a network that sleeps {args.sleep:g} s per "
                f"batch of 32 ({args.batches} batches, {ideal:g} s of sleep), 8 batches per task")
            out()
            out("| workers | seconds | images/s | efficiency T1/(N x TN) | actor start-up (s) | "
                "overhead per batch (ms) | driver commit rate (rows/s) |")
            out("|---:|---:|---:|---:|---:|---:|---:|")
            for n, rep in scaling:
                eff = t1 / (n * rep.embed_seconds)
                per_batch = (n * rep.embed_seconds - ideal) / args.batches * 1000
                rate = rep.n_committed / rep.commit_seconds if rep.commit_seconds else float("nan")
                out(f"| {n} | {rep.embed_seconds:.2f} | {n_items / rep.embed_seconds:.0f} | "
                    f"**{eff:.2f}** | {rep.startup_seconds:.1f} | {per_batch:.0f} | {rate:,.0f} |")
            out()
            out("T1 is the 1-worker run; the driver commit rate is rows committed over the seconds "
                "its cache writer spent committing (off the driver's loop).")
            out()
        ray.shutdown()
        # ---- 3. the driver's writer alone -------------------------------------------------
        rate = _writer_rate(tmp, args.writer_rows) if "writer" in parts else float("nan")
        if "writer" in parts:
            out("#### The driver's cache writer alone")
            out()
            out(f"{args.writer_rows:,} rows of 1,024 float32 arriving in shards of 256: "
                f"**{rate:,.0f} rows/s** committed (a segment file per commit; shards that queue "
                "up during a commit are committed together; files merged in tiers as they go).")
            out()
        total = time.perf_counter() - started
        out(f"Total: {total:.0f} s. Command: `.venv/bin/python -m benchmarks.distributed "
            f"--images {args.images} --sleep {args.sleep:g} --batches {args.batches} "
            f"--parts {args.parts}`")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
