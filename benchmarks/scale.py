"""Scale: the cache's cost per row against its size, and featx embed's time and memory per image.

    .venv/bin/python -m benchmarks.scale [--rows 1000000] [--width 1024] [--files 10000,100000]
        [--items 1000000] [--open-rows 10000000] [--skip embed]

Each part runs in a fresh process and prints ratios against baselines measured in the same run:

  ceilings   the disk's sequential write speed (1 GiB, fsync) and one empty commit (an HDF5 file
             of nothing, fsync, rename, fsync of the folder): what a commit cannot beat
  append     --rows rows of --width in batches of 32 (every batch a commit, as the engine's
             writer makes them when the network is slow) and of 256 (what the writer commits
             when batches queue up): rows/s over the first and last 10% and the whole run
             (merges included), files left, bytes written against the final size
  lookup     a new process opening the 32-batch cache and finding 1,000 random keys (contains),
             another reading their vectors too (lookup), then every key (contains, batches of
             4,096); with --skip append, on the caches --dir holds from an earlier run
  open       a new process opening a --open-rows cache (width 4) and finding 1,000 keys; the
             key index's memory
  embed      featx embed of N small PNG files (a tiny network at 32 px, a warm-up run first):
             seconds per image and peak RSS per N; the library path (embed_to_cache) on
             --items rows of a table through a tiny dense network

The table is printed and written to benchmarks/results/scale.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
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
        return platform.processor() or platform.machine()


def keys_for(start: int, n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


# ---- parts, each run in its own process ----------------------------------------------------


def part_ceilings(folder: Path) -> dict[str, Any]:
    import h5py

    path = folder / "seq.bin"
    block = os.urandom(1 << 24)
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seq = (64 << 24) / (time.perf_counter() - started)
    path.unlink()
    n = 200
    started = time.perf_counter()
    for i in range(n):
        tmp = folder / f".tmp-{i}.h5"
        with h5py.File(tmp, "w") as f:
            f.attrs["x"] = 1
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / f"{i}.h5")
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    commit = (time.perf_counter() - started) / n
    for i in range(n):
        (folder / f"{i}.h5").unlink()
    return {"seq_write_mb_s": seq / 1e6, "empty_commit_ms": commit * 1e3}


def part_append(folder: Path, rows: int, width: int, batch: int) -> dict[str, Any]:
    import numpy as np

    from featx.cache import EmbeddingCache

    path = folder / f"append-{batch}.h5"
    cache = EmbeddingCache(path)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((4096, width)).astype(np.float32)
    tenth = max(batch, rows // 10)
    marks = [(0, time.perf_counter())]
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        at = done % (len(pool) - n)
        cache.append("g", keys_for(done, n), pool[at:at + n], ["x"] * n)
        done += n
        if done // tenth > (done - n) // tenth or done == rows:
            marks.append((done, time.perf_counter()))
    total = marks[-1][1] - marks[0][1]
    first = (marks[1][0] - marks[0][0]) / (marks[1][1] - marks[0][1])
    last = (marks[-1][0] - marks[-2][0]) / (marks[-1][1] - marks[-2][1])
    files = [path, *sorted(path.with_name(path.name + ".segments").glob("*.h5"))]
    size = sum(f.stat().st_size for f in files if f.exists())
    return {"rows": rows, "batch": batch, "first10_rows_s": first, "last10_rows_s": last,
            "whole_rows_s": rows / total, "seconds": total, "files": sum(f.exists() for f in files),
            "bytes_written": cache.bytes_written, "final_bytes": size}


def part_lookup(folder: Path, rows: int) -> dict[str, Any]:
    import numpy as np

    from featx.cache import EmbeddingCache  # Python's imports are not the cache's to pay

    picks = np.random.default_rng(1).choice(rows, 1000, replace=False)
    wanted = [hashlib.sha256(str(int(i)).encode()).hexdigest() for i in picks]
    started = time.perf_counter()
    found = EmbeddingCache(folder / "append-32.h5").contains("g", wanted)
    finding = time.perf_counter() - started
    assert found.all()
    started = time.perf_counter()
    cache = EmbeddingCache(folder / "append-32.h5")
    found, vectors = cache.lookup("g", wanted)
    first = time.perf_counter() - started
    assert found.all() and len(vectors) == 1000
    every = keys_for(0, rows)
    started = time.perf_counter()
    hits = 0
    for lo in range(0, rows, 4096):
        hits += int(cache.contains("g", every[lo:lo + 4096]).sum())
    all_keys = time.perf_counter() - started
    assert hits == rows
    return {"open_and_find_1000_s": finding, "open_and_1000_s": first,
            "all_keys_per_s": rows / all_keys}


def part_build_narrow(folder: Path, rows: int) -> dict[str, Any]:
    """A cache of ``rows`` keys at width 4, in commits of 100,000 (for the open time)."""
    import numpy as np

    from featx.cache import EmbeddingCache

    cache = EmbeddingCache(folder / "narrow.h5")
    started = time.perf_counter()
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        cache.append("g", keys_for(lo, n), np.zeros((n, 4), np.float32), [""] * n)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def part_open(folder: Path, name: str, rows: int) -> dict[str, Any]:
    """A new process: open ``name``, find 1,000 random keys; the index's memory."""
    import numpy as np

    from featx.cache import EmbeddingCache

    picks = np.random.default_rng(1).choice(rows, 1000, replace=False)
    wanted = [hashlib.sha256(str(int(i)).encode()).hexdigest() for i in picks]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cache = EmbeddingCache(folder / name)
    found, _ = cache.lookup("g", wanted)
    seconds = time.perf_counter() - started
    assert found.all()
    index_bytes = sum(g.nbytes for f in cache._files.indexes() for g in f.groups.values())
    return {"rows": rows, "open_and_1000_s": seconds, "index_mb": index_bytes / 1e6,
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def _tiny_model(path: Path) -> None:
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inp, keras.layers.Dense(16)(x)).save(path)


def part_embed(folder: Path, counts: list[int]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    model = folder / "tiny.keras"
    _tiny_model(model)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    made = 0
    images = folder / "images"
    images.mkdir(exist_ok=True)
    featx = Path(sys.executable).with_name("featx")
    for n in [min(counts), *counts]:  # the first is the warm-up
        while made < n:
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(
                images / f"{made:07d}.png")
            made += 1
        subset = folder / f"list-{n}.csv"
        subset.write_text("path\n" + "".join(f"{images / f'{i:07d}.png'}\n" for i in range(n)))
        cache = folder / f"embed-{n}.h5"
        shutil.rmtree(cache.with_name(cache.name + ".segments"), ignore_errors=True)
        cache.unlink(missing_ok=True)
        started = time.perf_counter()
        child = subprocess.Popen([str(featx), "embed", str(subset), "--backbone", str(model),
                                  "--input-size", "32", "--cache", str(cache), "-q"])
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"featx embed of {n} files failed ({status})")
        out[str(n)] = {"seconds_per_image": seconds / n, "peak_rss_mb": usage.ru_maxrss / 1024}
    return out


def part_library(folder: Path, items: int) -> dict[str, Any]:
    import numpy as np

    from featx import ImageEmbedder

    def dense(shape: tuple[int, ...]) -> Any:
        import keras

        inp = keras.Input(shape)
        return keras.Model(inp, keras.layers.Dense(16)(inp))

    X = np.random.default_rng(0).standard_normal((items, 8)).astype(np.float32)
    emb = ImageEmbedder(dense, cache=folder / "library.h5", batch_size=256)
    started = time.perf_counter()
    report = emb.embed_to_cache(X)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"items": items, "seconds_per_item": seconds / items, "peak_rss_mb": peak,
            "input_mb": X.nbytes / 1e6, "embedded": report.n_embedded}


PARTS = {"ceilings": part_ceilings, "append": part_append, "lookup": part_lookup,
         "embed": part_embed, "library": part_library, "build_narrow": part_build_narrow,
         "open": part_open}


def _run_part(name: str, folder: Path, *args: Any) -> dict[str, Any]:
    """Run one part in a fresh process; its result as JSON."""
    code = (f"import json, sys; from pathlib import Path; from benchmarks.scale import PARTS; "
            f"print('RESULT' + json.dumps(PARTS[{name!r}](Path({str(folder)!r}), "
            f"*json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], cwd=ROOT,
                         capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode != 0:
        raise RuntimeError(f"part {name} failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--files", default="10000,100000")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--open-rows", type=int, default=10_000_000,
                        help="keys of the narrow cache whose opening is timed")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated")
    parser.add_argument("--dir", default=None,
                        help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="featx-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        if "ceilings" not in skip:
            results["ceilings"] = _run_part("ceilings", folder)
        if "append" not in skip:
            for batch in (32, 256):
                results[f"append-{batch}"] = _run_part("append", folder, args.rows, args.width,
                                                       batch)
                print(json.dumps(results[f"append-{batch}"]), flush=True)

        if "lookup" not in skip and (folder / "append-32.h5").exists():
            results["lookup"] = _run_part("lookup", folder, args.rows)
        if "open" not in skip:
            results["build_narrow"] = _run_part("build_narrow", folder, args.open_rows)
            results["open"] = _run_part("open", folder, "narrow.h5", args.open_rows)
        if "embed" not in skip:
            counts = [int(c) for c in args.files.split(",")]
            results["embed"] = _run_part("embed", folder, counts)
        if "library" not in skip:
            results["library"] = _run_part("library", folder, args.items)
            small = max(1, args.items // 10)
            results["library-small"] = _run_part("library", folder / "small", small)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = report(results, args)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.md").write_text(text)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"# Scale ({time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores)", "",
             f"`python -m benchmarks.scale --rows {args.rows} --width {args.width} "
             f"--files {args.files} --items {args.items}`", ""]
    if "ceilings" in r:
        c = r["ceilings"]
        lines += [f"Ceilings: sequential write {c['seq_write_mb_s']:.0f} MB/s; one empty commit "
                  f"{c['empty_commit_ms']:.2f} ms.", ""]
    for batch in (32, 256):
        a = r.get(f"append-{batch}")
        if not a:
            continue
        if batch == 32:
            lines += ["| append | rows/s | ratio to the first 10% | target |",
                      "|---|---:|---:|---|"]
        ceiling = ""
        if "ceilings" in r:
            commits = r["ceilings"]["empty_commit_ms"] / 1e3
            ceiling = f" (empty-commit ceiling {batch / commits:,.0f} rows/s)"
        lines += [
            f"| batches of {batch}, first 10%{ceiling} | {a['first10_rows_s']:,.0f} | 1.00 | |",
            f"| batches of {batch}, last 10% | {a['last10_rows_s']:,.0f} | "
            f"{a['last10_rows_s'] / a['first10_rows_s']:.2f} | >= 0.8 (32) |",
            f"| batches of {batch}, whole run ({a['seconds']:.0f} s, merges included) | "
            f"{a['whole_rows_s']:,.0f} | {a['whole_rows_s'] / a['first10_rows_s']:.2f} | "
            f">= 0.5 (32); >= 20,000 rows/s (256) |",
            f"| batches of {batch}: files left, bytes written / final size | {a['files']} | "
            f"{a['bytes_written'] / a['final_bytes']:.2f} | <= 5 |",
        ]
    if "lookup" in r:
        lk = r["lookup"]
        lines += ["", f"A new process opens the {args.rows:,}-row cache and finds 1,000 random "
                  f"keys in {lk.get('open_and_find_1000_s', float('nan')):.2f} s (target <= "
                  f"0.5 s), or reads their vectors too in {lk['open_and_1000_s']:.2f} s; every "
                  f"key at {lk['all_keys_per_s']:,.0f} keys/s (target >= 200,000)."]
    if "open" in r:
        o = r["open"]
        lines += ["", f"A new process opens a {o['rows']:,}-key cache (width 4, built in "
                  f"{r['build_narrow']['seconds']:.0f} s) and finds 1,000 random keys in "
                  f"{o['open_and_1000_s']:.2f} s; its key index holds {o['index_mb']:.0f} MB "
                  f"({o['index_mb'] / o['rows'] * 1e6:.0f} MB per million keys; the process grew "
                  f"by {o['rss_growth_mb']:.0f} MB)."]
    if "embed" in r:
        e = r["embed"]
        counts = [int(c) for c in args.files.split(",")]
        base = e[str(min(counts))]
        lines += ["", "| featx embed | s per image | ratio | peak RSS MB | ratio |",
                  "|---|---:|---:|---:|---:|"]
        for n in counts:
            row = e[str(n)]
            lines.append(
                f"| {n:,} files | {row['seconds_per_image'] * 1e3:.3f} ms | "
                f"{row['seconds_per_image'] / base['seconds_per_image']:.2f} | "
                f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
        lines.append("Targets: time ratio <= 1.25, RSS ratio <= 1.15.")
    if "library" in r:
        big, small = r["library"], r["library-small"]
        lines += ["", f"Library path (embed_to_cache, a tiny dense network): {big['items']:,} "
                  f"rows in {big['seconds_per_item'] * 1e6:.0f} us each, peak RSS "
                  f"{big['peak_rss_mb']:.0f} MB (input {big['input_mb']:.0f} MB); "
                  f"{small['items']:,} rows: {small['seconds_per_item'] * 1e6:.0f} us each, "
                  f"{small['peak_rss_mb']:.0f} MB."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
