"""A grid search over a cached INT8 Pipeline, against the same search in bfloat16.

    .venv/bin/python -m benchmarks.int8_search [--images 240] [--cv 3] [--size 224]

GridSearchCV(cv=3, n_jobs=1) over Pipeline(ImageEmbedder("mobilenet", precision=P, cache=...),
LogisticRegression) with three values of C, on a folder of benchmark photos. Three setups:
bfloat16 (the baseline); INT8 as main had it, each fold's clone calibrating on its own first
images (``cached_calibration`` switched off); INT8 sharing the calibration of the cache's group.
Each setup runs in a fresh process and a fresh featx home twice, each time with a fresh cache:
"cold" pays the OpenVINO conversion (and INT8 its quantizations), "warm" finds them on disk.
Prints the time of ``search.fit``, the cache groups left and their rows, and how many images
went through the network (decodes for the network, counted per image), each time as a ratio
of bfloat16's. ``FEATX_ALLOW_INT8=1`` is set: on a CPU without INT8 units INT8 runs at about
float32 speed, so the ratios say what the search costs, not what INT8 buys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: setup -> (precision, whether a fit may reuse the calibration of the cache's group)
SETUPS = {"bfloat16": ("mixed_bfloat16", True), "int8, per fold (main)": ("int8", False),
          "int8, shared": ("int8", True)}


def _search(folder: str, n: int, precision: str, cv: int, size: int, cache: str) -> dict:
    """One search in this process: its time, groups and decodes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    import featx.embed.engine as engine_module
    from benchmarks.photos import make_photo_folder
    from featx import ImageEmbedder
    from featx.cache.store import open_cache

    paths = make_photo_folder(folder, n)
    y = [i % 2 for i in range(n)]
    decoded: Counter[str] = Counter()
    real = engine_module.load_pixels

    def counting(item, *args, **kwargs):  # as load_pixels
        decoded[item.name] += 1
        return real(item, *args, **kwargs)

    engine_module.load_pixels = counting  # type: ignore[assignment]
    pipe = make_pipeline(
        ImageEmbedder("mobilenet", input_size=size, engine="openvino", precision=precision,
                      cache=cache),
        LogisticRegression(max_iter=2000))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=cv, n_jobs=1)
    t0 = time.perf_counter()
    search.fit(paths, y)
    seconds = time.perf_counter() - t0
    groups = open_cache(cache).groups()
    return {"seconds": seconds, "groups": [g.rows for g in groups],
            "decoded": sum(decoded.values()), "distinct": len(decoded),
            "most": max(decoded.values(), default=0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", default="cold", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(tempfile.gettempdir()) / "featx-int8-search"
    folder = str(work / f"photos-{args.images}")
    if args.child:
        precision, shared = SETUPS[args.child]
        if not shared:
            import featx.embed.embedder

            featx.embed.embedder.cached_calibration = lambda config, cache: None  # type: ignore
        out = _search(folder, args.images, precision, args.cv, args.size,
                      str(Path(os.environ["FEATX_HOME"]) / f"emb-{args.run}.h5"))
        print("RESULT " + json.dumps(out))
        return 0
    from benchmarks.photos import make_photo_folder
    from benchmarks.run import machine

    make_photo_folder(folder, args.images)
    results: dict[tuple[str, str], dict] = {}
    for setup in SETUPS:
        with tempfile.TemporaryDirectory(prefix="featx-int8-home-") as home:
            for run in ("cold", "warm"):
                env = {**os.environ, "FEATX_HOME": home, "FEATX_ALLOW_INT8": "1"}
                cmd = [sys.executable, "-m", "benchmarks.int8_search", "--images",
                       str(args.images), "--cv", str(args.cv), "--size", str(args.size),
                       "--child", setup, "--run", run]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                      cwd=Path(__file__).resolve().parent.parent)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")),
                            None)
                if done.returncode or line is None:
                    raise SystemExit(f"{setup} failed:\n{done.stderr[-3000:]}")
                results[setup, run] = json.loads(line[len("RESULT "):])
                print(setup, run, results[setup, run], flush=True)
    rows = ["| setup | run | search.fit | vs bfloat16 | cache groups (rows) | network decodes "
            "(distinct images, most per image) |", "|---|---|---:|---:|---|---|"]
    for (setup, run), r in results.items():
        base = results["bfloat16", run]["seconds"]
        rows.append(f"| {setup} | {run} | {r['seconds']:.1f} s | {r['seconds'] / base:.2f}x | "
                    f"{len(r['groups'])} ({', '.join(map(str, r['groups']))}) | "
                    f"{r['decoded']} ({r['distinct']}, {r['most']}) |")
    text = "\n".join([
        f"Machine: {machine()}", "",
        f"GridSearchCV(cv={args.cv}, 3 candidates, n_jobs=1) over mobilenet at {args.size} px "
        f"(OpenVINO) + LogisticRegression, {args.images} photos", "", *rows, "",
        "Command: `.venv/bin/python -m benchmarks.int8_search "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    ])
    print("\n" + text)
    (Path(__file__).parent / "results" / "int8-search.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
