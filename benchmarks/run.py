"""featx benchmarks: one command, one table of ratios against baselines measured in the same run.

    .venv/bin/python -m benchmarks.run [--images 500] [--backbone mobilenet]

Sections:
  cache   the second transform of the same images with a full cache, against the first (empty
          cache). Target: at least 20x.

Results are printed and written, with a description of the machine, to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    import keras

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"Keras {keras.__version__} ({keras.backend.backend()} backend)")


def bench_cache(paths: list[str], backbone: str, work: Path) -> list[tuple[str, float, str]]:
    from featx import ImageEmbedder

    cache = work / "cache.h5"
    if cache.exists():
        cache.unlink()
    # Build the network first, so that neither pass pays for it.
    ImageEmbedder(backbone).fit_transform(paths[:1])
    emb = ImageEmbedder(backbone, cache=cache)
    t0 = time.perf_counter()
    first = emb.fit_transform(paths)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = ImageEmbedder(backbone, cache=cache).fit_transform(paths)
    t_second = time.perf_counter() - t0
    assert (first == second).all()
    n = len(paths)
    return [
        ("featx, empty cache (first transform)", n / t_first, "1.00x"),
        ("featx, full cache (second transform)", n / t_second, f"{t_first / t_second:.1f}x"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--work", default=None, help="folder for photos and caches")
    args = parser.parse_args(argv)

    from benchmarks.photos import make_photo_folder

    work = Path(args.work or Path(tempfile.gettempdir()) / "featx-bench")
    paths = make_photo_folder(work / f"photos-{args.images}", args.images)
    rows = bench_cache(paths, args.backbone, work)

    title = (f"Cache: {args.images} JPEG photos (300-800 px), {args.backbone} at its native size; "
             "ratio = speed-up over the first transform")
    lines = [f"### {title}", "", f"Machine: {machine()}", "",
             "| run | images/s | ratio |", "|---|---:|---:|"]
    lines += [f"| {name} | {speed:,.1f} | {ratio} |" for name, speed, ratio in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    (RESULTS / "cache.md").write_text(f"<!-- {stamp} -->\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
