"""Sources: `featx embed` of the same images as files, tar shards, Parquet parts and from a
local S3 server; 100k against 10k items from shards.

    .venv/bin/python -m benchmarks.sources [--items 100000] [--small 10000] [--per-part 1000]
        [--repeat 3] [--skip s3,parquet] [--dir DIR] [--report-only]
        [--export-sizes 100000,1000000 | none]

The images are --items random 24 x 24 PNGs (about 1.8 kB each, so decoding is cheap and the
input side is what is measured), written once as files in one folder, as WebDataset shards of
--per-part samples (100 shards at 100k), as Parquet parts of --per-part rows, and uploaded as
the same shards to moto's S3 server (a separate process on a free port; s3fs reaches it through
boto's usual AWS_* variables). Each run is the `featx` command in a fresh process (a tiny
convolutional network at 32 px on the OpenVINO engine, as benchmarks/scale.py uses, a fresh
cache each time): wall seconds and peak RSS (the child's own `ru_maxrss`; the parent stays
small, because Linux carries a parent's peak into a forked child). A warm-up run goes first.

Targets (issue 31): shards and Parquet >= 0.95x the files' embed rate, the local S3 server
>= 0.8x; from shards, 100k against 10k items: time per item ratio <= 1.25, peak RSS ratio <= 1.1.
The table is printed and written to benchmarks/results/sources.md (and .json).

Then `featx export` of a cache group of each of --export-sizes rows (width 1,024), as .npy and as
Parquet shards: rows/s and peak RSS, the largest against the smallest (:func:`export_section`,
which runs :func:`benchmarks.export.export`; ``--export-sizes none`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


# ---- the data, made in a child process (the parent stays small) -----------------------------


def make_data(folder: str, items: int, small: int, per_part: int, s3_port: int | None) -> dict:
    """Images as files, shards and Parquet parts (and the small sets as links to the first
    ones); the shards uploaded to the S3 server; the tiny model."""
    import io
    import tarfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from benchmarks.scale import _tiny_model

    base = Path(folder)
    made_file = base / "made.json"
    wanted = {"items": items, "small": small, "per_part": per_part}
    if made_file.exists() and json.loads(made_file.read_text())["args"] == wanted:
        _upload(base, s3_port)  # the files are there from a run before (--dir)
        return json.loads(made_file.read_text())["made"]
    _tiny_model(base / "tiny.keras")
    rng = np.random.default_rng(0)
    for name in ("files", "shards", "parquet", "files-small", "shards-small"):
        (base / name).mkdir(parents=True, exist_ok=True)
    made = 0
    nbytes = 0
    for part in range(-(-items // per_part)):
        rows = []
        with tarfile.open(base / "shards" / f"shard-{part:05d}.tar", "w") as tf:
            for i in range(part * per_part, min(items, (part + 1) * per_part)):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(buf, "PNG")
                data = buf.getvalue()
                nbytes += len(data)
                (base / "files" / f"{i:07d}.png").write_bytes(data)
                for member, value in ((f"{i:07d}.cls", str(i % 10).encode()),
                                      (f"{i:07d}.png", data)):
                    info = tarfile.TarInfo(member)
                    info.size = len(value)
                    tf.addfile(info, io.BytesIO(value))
                rows.append(data)
                if i < small:
                    os.symlink(base / "files" / f"{i:07d}.png",
                               base / "files-small" / f"{i:07d}.png")
                made += 1
        pq.write_table(pa.table({"image": rows, "label": [i % 10 for i in range(len(rows))]}),
                       base / "parquet" / f"part-{part:05d}.parquet", row_group_size=256)
        if part * per_part < small:
            os.symlink(base / "shards" / f"shard-{part:05d}.tar",
                       base / "shards-small" / f"shard-{part:05d}.tar")
    _upload(base, s3_port)
    out = {"items": made, "mean_image_bytes": nbytes / max(made, 1),
           "shards": -(-items // per_part)}
    made_file.write_text(json.dumps({"args": wanted, "made": out}))
    return out


def _upload(base: Path, s3_port: int | None) -> None:
    """The shards into the S3 server's bucket ``bench``."""
    if s3_port is None:
        return
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    fs.put(str(base / "shards") + "/", "bench/shards/", recursive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _s3_env(port: int) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


def _child(code: str, *args: Any, env: dict[str, str] | None = None) -> Any:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], cwd=ROOT,
                         capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def embed_run(folder: Path, src: str, n: int, env: dict[str, str] | None = None) -> dict:
    """``featx embed SRC`` into a fresh cache in a child: seconds, items/s, peak RSS."""
    cache = folder / "run.h5"
    shutil.rmtree(cache.with_name(cache.name + ".segments"), ignore_errors=True)
    cache.unlink(missing_ok=True)
    featx = Path(sys.executable).with_name("featx")
    started = time.perf_counter()
    child = subprocess.Popen(
        [str(featx), "embed", src, "--backbone", str(folder / "tiny.keras"), "--input-size",
         "32", "--cache", str(cache)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    out = (child.stdout.read() if child.stdout else b"").decode()
    err = (child.stderr.read() if child.stderr else b"").decode()
    if status != 0:
        raise RuntimeError(f"featx embed {src} failed ({status}):\n{err[-3000:]}")
    if f"failed 0 of {n} images" not in out:
        raise RuntimeError(f"featx embed {src}: not every image was embedded:\n{out[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"src": src, "items": n, "seconds": seconds, "items_per_s": n / seconds,
            "cpu_seconds": cpu, "cpu_us_per_item": cpu / n * 1e6,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000,
                        help="the smaller run the 100k run is compared with (default 10000)")
    parser.add_argument("--per-part", type=int, default=1000,
                        help="samples per shard and rows per Parquet part (default 1000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the runs (default 3); medians are reported")
    parser.add_argument("--skip", default="", help="runs to leave out: s3, parquet")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--export-sizes", default="100000,1000000",
                        help="rows of the groups featx export writes (width 1,024), or 'none'")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="featx-sources-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = None
    results: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "args": vars(args)}
    try:
        env: dict[str, str] = {}
        port = None
        if "s3" not in skip:
            port = _free_port()
            env = _s3_env(port)
            server = subprocess.Popen(
                [sys.executable, "-c", "import sys, time; from moto.server import "
                 "ThreadedMotoServer; s = ThreadedMotoServer(ip_address='127.0.0.1', "
                 "port=int(sys.argv[1]), verbose=False); s.start(); time.sleep(1e9)", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for(port)
        started = time.perf_counter()
        results["data"] = _child(
            "import json, sys; from benchmarks.sources import make_data; "
            "print('RESULT' + json.dumps(make_data(*json.loads(sys.argv[1]))))",
            str(folder), args.items, args.small, args.per_part, port, env=env)
        results["data"]["seconds"] = time.perf_counter() - started
        print(json.dumps(results["data"]), flush=True)
        embed_run(folder, str(folder / "shards-small"), args.small)  # warm-up: conversion
        runs = [("files", str(folder / "files"), args.items, None),
                ("shards", str(folder / "shards"), args.items, None),
                ("parquet", str(folder / "parquet"), args.items, None),
                ("s3 shards", "s3://bench/shards/", args.items, env),
                ("shards (small)", str(folder / "shards-small"), args.small, None),
                ("files (small)", str(folder / "files-small"), args.small, None)]
        runs = [r for r in runs if not (r[0] == "s3 shards" and "s3" in skip)
                and not (r[0] == "parquet" and "parquet" in skip)]
        rounds: list[dict[str, dict]] = []
        for _ in range(args.repeat):
            rounds.append({})
            for name, src, n, run_env in runs:
                r = embed_run(folder, src, n, run_env)
                print(name, json.dumps(r), flush=True)
                rounds[-1][name] = r
        results["rounds"] = rounds
        if args.export_sizes != "none":
            results["export"] = export_section(args, folder)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = report(results, args)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sources.md").write_text(text)
    (RESULTS / "sources.json").write_text(json.dumps(results, indent=2))
    return 0


def _wait_for(port: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the S3 server did not start on port {port}")


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    """Each run's median over the rounds; each ratio the median of the rounds' ratios (a
    round's runs are minutes apart, so a ratio within a round shares the machine's load)."""
    rounds = r["rounds"]
    names = list(rounds[0])

    def med(name: str, field: str) -> float:
        return _median([x[name][field] for x in rounds])

    def ratio(name: str, other: str, field: str, per_item: bool = False) -> float:
        def value(x: dict, n: str) -> float:
            return x[n][field] / (x[n]["items"] if per_item else 1)
        return _median([value(x, name) / value(x, other) for x in rounds])

    lines = [f"# Sources ({time.strftime('%Y-%m-%d')}, {r['cpu']}, {r['cores']} cores)", "",
             f"`python -m benchmarks.sources --items {args.items} --small {args.small} "
             f"--per-part {args.per_part} --repeat {args.repeat}`", "",
             f"{r['data']['items']:,} random 24 x 24 PNGs ({r['data']['mean_image_bytes']:,.0f} "
             f"bytes each), {r['data']['shards']} shards / Parquet parts; `featx embed` with a "
             "tiny network at 32 px (OpenVINO), a fresh cache each run, each in a fresh process.",
             f"Medians of {len(rounds)} rounds; a ratio is the median of the rounds' ratios "
             "(wall time is the machine's load as much as featx's: CPU seconds, the process's "
             "user + system time, are the steadier measure).", "",
             "| source | items | wall s | items/s | rate vs files | target | CPU us/item "
             "| CPU vs files | peak RSS MB |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    targets = {"shards": ">= 0.95", "parquet": ">= 0.95", "s3 shards": ">= 0.8"}
    for name in names:
        items = rounds[0][name]["items"]
        base = "files" if items == rounds[0]["files"]["items"] else "files (small)"
        lines.append(
            f"| {name} | {items:,} | {med(name, 'seconds'):.1f} | {med(name, 'items_per_s'):,.0f} "
            f"| {ratio(name, base, 'items_per_s'):.2f} | {targets.get(name, '')} "
            f"| {med(name, 'cpu_us_per_item'):.0f} | {ratio(name, base, 'cpu_us_per_item'):.2f} "
            f"| {med(name, 'peak_rss_mb'):.0f} |")
    lines.append("")
    for big, little in (("shards", "shards (small)"), ("files", "files (small)")):
        if big in names and little in names:
            per_item = ratio(big, little, "seconds", per_item=True)
            cpu = ratio(big, little, "cpu_seconds", per_item=True)
            rss = ratio(big, little, "peak_rss_mb")
            lines.append(
                f"- {big}: {rounds[0][big]['items']:,} against {rounds[0][little]['items']:,} "
                f"items: time per item {per_item:.2f}x (CPU time per item {cpu:.2f}x; target "
                f"<= 1.25), peak RSS {med(big, 'peak_rss_mb'):.0f} / "
                f"{med(little, 'peak_rss_mb'):.0f} MB = {rss:.2f}x (target <= 1.1).")
    if "export" in r:
        from benchmarks.export import table

        lines += ["", "## featx export", "", *table(r["export"])]
    return "\n".join(lines) + "\n"


# --- export (SOURCES-B) ---


def export_section(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`featx export` of a cache group of each size, .npy and Parquet, each in a fresh process
    (benchmarks/export.py; also runnable alone: python -m benchmarks.export)."""
    from benchmarks.export import export

    sizes = [int(n) for n in args.export_sizes.split(",")]
    return export(sizes, 1024, ["npy", "parquet"], folder / "export")


if __name__ == "__main__":
    sys.exit(main())
