"""What the cache costs while the network runs: featx from the benchmark photos without a cache,
with content keys but no commits, and with the cache, alternating in one process.

    .venv/bin/python -m benchmarks.cache_cost [--images 1000] [--precision mixed_bfloat16]
        [--repeats 3]

Mobilenet at 224 px on the OpenVINO engine, batch 32. "keys, no commits" computes every content
key and looks the batch up as a cached run does, but hands nothing to the cache writer (its
``put`` is replaced, here only); the difference to "cache" is what committing costs. The table is
written to ``benchmarks/results/cache-cost.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import featx.cache.writer as writer
    from benchmarks.measure import _weights
    from benchmarks.photos import make_photo_folder
    from benchmarks.run import machine
    from featx import ImageEmbedder

    folder = Path(tempfile.gettempdir()) / "featx-bench" / f"photos-{args.images}"
    paths = make_photo_folder(folder, args.images)
    params = dict(weights=_weights("mobilenet"), input_size=224, precision=args.precision,
                  engine="openvino")
    ImageEmbedder("mobilenet", **params).fit(paths).transform(paths[:64])  # build, warm up
    work = Path(tempfile.mkdtemp(prefix="featx-cache-cost-"))
    real_put = writer.CacheWriter.put
    results: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.repeats):
        for mode in ("no cache", "keys, no commits", "cache"):
            writer.CacheWriter.put = (  # type: ignore[method-assign]
                (lambda self, *a: None) if mode == "keys, no commits" else real_put)
            cache = None if mode == "no cache" else work / f"{r}-{mode[:4]}.h5"
            emb = ImageEmbedder("mobilenet", cache=cache, **params).fit(paths)
            t0, c0 = time.perf_counter(), time.process_time()
            emb.transform(paths)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            results.setdefault(mode, []).append((len(paths) / wall, cpu / len(paths) * 1e3))
            print(f"  {mode:<17} {results[mode][-1][0]:7.1f} img/s "
                  f"{results[mode][-1][1]:5.2f} CPU ms/img", flush=True)
    writer.CacheWriter.put = real_put  # type: ignore[method-assign]
    rows = [f"Machine: {machine()}", "",
            f"mobilenet 224 px, OpenVINO, {args.precision}, batch 32, {args.images} JPEG photos, "
            f"fastest of {args.repeats} (alternating)", "",
            "| run | images/s | CPU ms per image |", "|---|---:|---:|"]
    for mode, runs in results.items():
        speed, cpu = max(runs)
        rows.append(f"| {mode} | {speed:,.1f} | {cpu:.2f} |")
    text = "\n".join(rows) + "\n"
    print(text)
    (Path(__file__).parent / "results" / "cache-cost.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
