"""How decoding and OpenVINO's inference share the cores: featx on the benchmark photos per split.

    .venv/bin/python -m benchmarks.threads [--images 600] [--precisions float32,mixed_bfloat16,int8]

Each split runs in a fresh process: decode threads (``n_workers``) against OpenVINO's own threads
and streams (``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT``/``NUM_STREAMS``), featx from the JPEG
files into an empty cache, batch 32, 224 px, mobilenet, fastest of the repeats. ``featx`` is the
split featx picks by itself (:func:`featx.nets.openvino_engine.openvino_options` and
:func:`featx.embed.engine.default_workers`), each ratio against the best split of the same
precision. The table is printed and written to ``benchmarks/results/threads.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

#: The OpenVINO settings tried, by name (None: featx's own choice).
SETTINGS: dict[str, dict[str, str] | None] = {
    "featx": None,
    "latency, all threads": {"PERFORMANCE_HINT": "LATENCY"},
    "latency, 1 thread": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1"},
    "latency, all threads, unpinned": {"PERFORMANCE_HINT": "LATENCY",
                                       "ENABLE_CPU_PINNING": "NO"},
    "throughput, 2 streams": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2"},
    "throughput, 2 streams, unpinned": {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2",
                                        "ENABLE_CPU_PINNING": "NO"},
}


def one(precision: str, workers: int | None, setting: str, n: int, repeats: int,
        folder: str) -> dict[str, Any]:
    """One split in this process: the fastest of ``repeats`` runs of ``n`` photos."""
    import numpy as np

    import featx.nets.openvino_engine as engine
    from benchmarks.measure import _weights
    from featx import ImageEmbedder

    overrides = SETTINGS[setting]
    if overrides is not None:
        chosen = engine.openvino_options

        def options(config: Any) -> dict[str, str]:
            base = {"INFERENCE_PRECISION_HINT": chosen(config)["INFERENCE_PRECISION_HINT"]}
            return base | overrides

        engine.openvino_options = options  # type: ignore[assignment]
    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))[:n]
    params: dict[str, Any] = dict(weights=_weights("mobilenet"), input_size=224,
                                  precision=precision, engine="openvino", n_workers=workers)
    if precision == "int8":
        params["calibration"] = paths[:300]
    ImageEmbedder("mobilenet", **params).fit(paths).transform(paths[:64])  # build, warm up
    work = Path(tempfile.mkdtemp(prefix="featx-threads-"))
    best = float("inf")
    for r in range(repeats):
        emb = ImageEmbedder("mobilenet", cache=work / f"c{r}.h5", **params).fit(paths)
        t0 = time.perf_counter()
        out = emb.transform(paths)
        best = min(best, time.perf_counter() - t0)
        assert out.shape[0] == len(paths) and np.isfinite(out).all()
    from featx.embed.engine import default_workers

    return {"images_per_s": n / best, "workers": workers or default_workers()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16,int8")
    parser.add_argument("--workers", default="1,2,3", help="decode threads tried")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's JSON task
    args = parser.parse_args(argv)
    from benchmarks.photos import make_photo_folder

    folder = Path(tempfile.gettempdir()) / "featx-bench" / f"photos-{max(args.images, 300)}"
    make_photo_folder(folder, max(args.images, 300))
    if args.one:
        task = json.loads(args.one)
        print(json.dumps(one(**task, n=args.images, repeats=args.repeats, folder=str(folder))))
        return 0
    from benchmarks.run import machine

    rows = ["| precision | OpenVINO setting | decode threads | images/s | vs best split |",
            "|---|---|---:|---:|---:|"]
    for precision in args.precisions.split(","):
        results = []
        for setting in SETTINGS:
            for workers in ([None] if setting == "featx" else
                            [int(w) for w in args.workers.split(",")]):
                task = {"precision": precision, "workers": workers, "setting": setting}
                cmd = [sys.executable, "-m", "benchmarks.threads", "--images", str(args.images),
                       "--repeats", str(args.repeats), "--one", json.dumps(task)]
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if out.returncode != 0 or not lines:
                    raise SystemExit(f"{task} failed:\n{out.stderr[-3000:]}")
                r = json.loads(lines[-1])
                print(f"  {precision:<15} {setting:<24} {r['workers']:>2} workers "
                      f"{r['images_per_s']:7.1f} img/s", flush=True)
                results.append((setting, r["workers"], r["images_per_s"]))
        top = max(speed for _, _, speed in results)
        for setting, workers, speed in results:
            bold = "**" if setting == "featx" else ""
            rows.append(f"| {precision} | {bold}{setting}{bold} | {workers} | {speed:,.1f} | "
                        f"{bold}{speed / top:.2f}x{bold} |")
    cores = len(os.sched_getaffinity(0))
    text = "\n".join([f"Machine: {machine()}", f"Cores this process may use: {cores}", "",
                      f"featx from {args.images} JPEG photos, mobilenet 224 px, batch 32, "
                      f"empty cache, fastest of {args.repeats}", "", *rows, ""])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
