"""featx export at scale: a 1M-row cache group (width 1,024) written as shards, against 100k rows.

    .venv/bin/python -m benchmarks.export [--sizes 100000,1000000] [--width 1024]
        [--formats npy,parquet] [--dir DIR]

For each size N a cache is written once (random float32 rows under sha256 keys, with a source
per row, in 4 appends: 4 files, as a cache that was embedded in several runs holds), then
``featx export --cache FILE --format F --out DIR`` runs in a fresh process per format: wall time
(process start included), rows/s, the rows/s the command reports (the export alone) and peak RSS
(``ru_maxrss`` of the child). The cache is written by another child: Linux keeps a parent's peak
in a forked child's ``ru_maxrss`` across exec, so rows written here would count in each export.
What the export holds is one block (16,384 rows: 64 MB at width 1,024) plus the cache's key index
and the reading plan (48 + 40 bytes a row), so peak RSS grows with N by about 88 bytes a row and
not with the vectors (4 GB at 1M x 1,024).

The cache and the exports are removed after each size (4 GB each at 1M). Prints a table and
writes ``benchmarks/results/export.md`` and ``.json``; :func:`export` is the section that
``benchmarks/sources.py`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
APPENDS = 4


def write_cache(cache: str | Path, n: int, width: int) -> None:
    """``n`` random rows of ``width`` in ``APPENDS`` files, a source each."""
    from featx.cache.store import EmbeddingCache

    store = EmbeddingCache(cache)
    store.merge = False
    rng = np.random.default_rng(0)
    step = -(-n // APPENDS)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        keys = [hashlib.sha256(f"featx export bench {i}".encode()).hexdigest()
                for i in range(lo, hi)]
        sources = [f"s3://bucket/images/{i:08d}.jpg" for i in range(lo, hi)]
        store.append("bench", keys, rng.standard_normal((hi - lo, width), np.float32), sources,
                     label="random rows")


def run_export(cache: Path, out: Path, fmt: str) -> dict[str, Any]:
    featx = Path(sys.executable).with_name("featx")
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [str(featx), "export", "--cache", str(cache), "--format", fmt, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    log = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"featx export failed:\n{log[-3000:]}")
    said = log.strip().splitlines()[-1]
    inner = float(said.rsplit("(", 1)[1].split()[0].replace(",", ""))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "command_rows_per_s": inner, "peak_rss_mb": usage.ru_maxrss / 1024,
            "bytes": size, "said": said}


def export(sizes: list[int], width: int, formats: list[str], folder: Path) -> dict[str, Any]:
    """The section: for each size and format, one ``featx export`` in a fresh process."""
    results: dict[str, Any] = {}
    for n in sizes:
        work = folder / f"export-{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        # In a child: the rows written here would otherwise count in each export's peak RSS
        # (Linux keeps the parent's peak in a forked child's ru_maxrss across exec).
        subprocess.run([sys.executable, "-c", "import sys; from benchmarks.export import "
                        "write_cache; write_cache(sys.argv[1], int(sys.argv[2]), "
                        "int(sys.argv[3]))", str(work / "emb.h5"), str(n), str(width)],
                       check=True, cwd=Path(__file__).parents[1])
        print(f"  cache of {n:,} x {width} written in {time.perf_counter() - t0:.0f} s",
              flush=True)
        for fmt in formats:
            r = run_export(work / "emb.h5", work / f"out-{fmt}", fmt)
            r["rows_per_s"] = n / r["seconds"]
            results[f"{fmt} {n}"] = {"rows": n, "width": width, "format": fmt, **r}
            print(f"  {fmt} {n:,}: {r['seconds']:.1f} s, {r['rows_per_s']:,.0f} rows/s "
                  f"(command: {r['command_rows_per_s']:,.0f}), peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
            shutil.rmtree(work / f"out-{fmt}")
        shutil.rmtree(work)
    return results


def table(results: dict[str, Any]) -> list[str]:
    lines = ["| format | rows x width | wall s (process) | rows/s (process) | rows/s (export "
             "alone) | peak RSS MB | written GB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results.values():
        lines.append(f"| {r['format']} | {r['rows']:,} x {r['width']:,} | {r['seconds']:.1f} | "
                     f"{r['rows_per_s']:,.0f} | {r['command_rows_per_s']:,.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['bytes'] / 1e9:.2f} |")
    by = {(r["format"], r["rows"]): r for r in results.values()}
    sizes = sorted({r["rows"] for r in results.values()})
    if len(sizes) >= 2:
        small, big = sizes[0], sizes[-1]
        lines.append("")
        for fmt in sorted({r["format"] for r in results.values()}):
            a, b = by.get((fmt, small)), by.get((fmt, big))
            if a and b:
                lines.append(
                    f"- {fmt}: {big:,} against {small:,} rows: peak RSS {b['peak_rss_mb']:.0f} / "
                    f"{a['peak_rss_mb']:.0f} MB = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x "
                    f"for {big / small:.0f}x the rows; time per row "
                    f"{(b['seconds'] / big) / (a['seconds'] / small):.2f}x.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--formats", default="npy,parquet")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "featx-bench")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = export(sizes, args.width, args.formats.split(","), args.dir)
    from benchmarks.heads_scale import cpu

    lines = [f"# featx export ({cpu()})", "",
             f"`.venv/bin/python -m benchmarks.export --sizes {args.sizes} --width {args.width} "
             f"--formats {args.formats}`", "", *table(results)]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "export.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
