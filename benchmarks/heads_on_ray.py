"""One SGDHead on Ray against one process: rows/s per epoch, from the same cache's files.

    .venv/bin/python -m benchmarks.heads_on_ray [--rows 200000] [--width 1024] [--classes 10]
        [--epochs 3] [--workers 2]

Builds a cache of ``--rows`` rows in a temporary folder (class means plus Gaussian noise,
appended 8,192 rows at a time, so the group lies in several files as an embedding run leaves
it), 95% of the keys labelled for training and 5% held out. Then:

1. ``SGDHead.fit_stream`` in this process, the scaler fitted beforehand (so only the epochs are
   timed): rows/s of each epoch, from the progress callback's row count;
2. ``fit_on_ray`` on a local cluster of ``--workers`` nodes of one CPU each
   (``ray.cluster_utils.Cluster``): rows/s of each epoch as it records them (``rows_per_s_``:
   reading, training and the driver's averaging), and the whole call's time (actors started,
   the scaler's pass) on its own.

Prints a table: median rows/s over the epochs, per worker, the ratio against one process, the
held-out accuracy of both heads, and the CPU (``/proc/cpuinfo``'s model name) and load.
Both run with ``max_epochs=--epochs`` and no early stopping (no held-out rows while training).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.store import EmbeddingCache
from featx.heads.rows import CachedBlocks
from featx.heads.scalable import SGDHead, fit_scaler

FP = "bench-heads-on-ray"
APPEND_ROWS = 8192


def cpu_name() -> str:
    """The CPU's model name and the number of logical CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"unknown CPU ({os.cpu_count()} logical CPUs)"


def build_cache(folder: Path, rows: int, width: int, classes: int, seed: int = 0) -> Any:
    """A cache of ``rows`` rows (class means plus noise), and its fit and test parts."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, width)).astype(np.float32) * (2.5 / np.sqrt(width))
    labels = rng.integers(0, classes, size=rows)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    cache = EmbeddingCache(folder / "emb.h5")
    for lo in range(0, rows, APPEND_ROWS):
        y = labels[lo:lo + APPEND_ROWS]
        X = rng.normal(size=(len(y), width)).astype(np.float32) + means[y]
        cache.append(FP, keys[lo:lo + APPEND_ROWS], X, ["bench"] * len(y))
    part = (rng.random(rows) < 0.05).astype(np.int8) * 2  # 5% test
    return CachedBlocks.split(cache, FP, keys, labels, part)


def held_out_accuracy(head: SGDHead, test: CachedBlocks) -> float:
    right = total = 0
    for X, y in test.blocks(seed=None):
        right += int((head.predict(X) == y).sum())
        total += len(y)
    return right / max(1, total)


def one_process(parts: dict[str, CachedBlocks], epochs: int) -> tuple[list[float], SGDHead]:
    """rows/s of each epoch of ``fit_stream`` (the scaler fitted before the clock)."""
    fit = parts["fit"]
    scaler = fit_scaler(fit)
    marks: list[float] = []
    seen = [0]

    def progress(n: int) -> None:
        seen[0] += n
        if seen[0] % fit.n_rows == 0:  # an epoch reads every training row once
            marks.append(time.perf_counter())

    marks.append(time.perf_counter())
    head = SGDHead(max_epochs=epochs, random_state=0).fit_stream(fit, scaler=scaler,
                                                                 progress=progress)
    seconds = np.diff(marks)
    return [fit.n_rows / s for s in seconds], head


def on_ray(parts: dict[str, CachedBlocks], epochs: int, workers: int) -> dict[str, Any]:
    """``fit_on_ray`` on a local cluster of ``workers`` one-CPU nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from featx.heads.on_ray import fit_on_ray

    started = time.perf_counter()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(workers - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    cluster_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        head = fit_on_ray(SGDHead(max_epochs=epochs, random_state=0), parts["fit"],
                          n_workers=workers)
        total_s = time.perf_counter() - started
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"head": head, "rates": head.rows_per_s_, "cluster_s": cluster_s, "total_s": total_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="featx-bench-heads-ray-"))
    try:
        started = time.perf_counter()
        parts = build_cache(folder, args.rows, args.width, args.classes)
        build_s = time.perf_counter() - started
        n_files = len(list((folder / "emb.h5.segments").glob("*.h5"))) + (
            folder / "emb.h5").exists()
        print(f"cache: {args.rows:,} rows x {args.width} float32 in {n_files} files, "
              f"built in {build_s:.1f} s; {parts['fit'].n_rows:,} training rows, "
              f"{parts['test'].n_rows:,} held out", flush=True)

        single_rates, single = one_process(parts, args.epochs)
        print("one process, rows/s by epoch:", [round(r) for r in single_rates], flush=True)
        ray_run = on_ray(parts, args.epochs, args.workers)
        print(f"Ray ({args.workers} workers), rows/s by epoch:",
              [round(r) for r in ray_run["rates"]], flush=True)

        one = statistics.median(single_rates)
        many = statistics.median(ray_run["rates"])
        head = ray_run["head"]
        acc_one = held_out_accuracy(single, parts["test"])
        acc_ray = held_out_accuracy(head, parts["test"])
        load = os.getloadavg()
        print()
        print(f"CPU: {cpu_name()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
        print(f"{args.rows:,} rows x {args.width}, {args.classes} classes, {args.epochs} "
              "epochs, SGDHead(loss='log_loss'), median over the epochs")
        print()
        print("| method | workers | rows/s per epoch | rows/s per worker | vs one process "
              "| held-out accuracy |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| SGDHead.fit_stream, one process | 1 | {one:,.0f} | {one:,.0f} | 1.00x "
              f"| {acc_one:.3f} |")
        print(f"| fit_on_ray, {head.n_workers_} nodes x 1 CPU | {head.n_workers_} | {many:,.0f} "
              f"| {many / head.n_workers_:,.0f} | {many / one:.2f}x | {acc_ray:.3f} |")
        print()
        print(f"rows per worker and epoch: {head.worker_rows_[0]}; starting the local cluster "
              f"{ray_run['cluster_s']:.1f} s; the whole fit_on_ray call {ray_run['total_s']:.1f} s "
              f"(actors, the scaler's pass and {head.n_epochs_} epochs)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
