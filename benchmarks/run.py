"""featx benchmarks: one command, one table of ratios against baselines measured in the same run.

    .venv/bin/python -m benchmarks.run [--images 1000] [--backbones mobilenet,resnet50] [--quick]
        [--precisions float32,mixed_float16] [--batch-size 32]

On a GPU machine (JAX backend, no TensorFlow: the Keras pipeline is then reported as skipped):

    KERAS_BACKEND=jax python -m benchmarks.run --precisions float32,mixed_float16 --batch-size 128

On one folder of realistic JPEG photos (300-800 px, made from scikit-image's and scikit-learn's
sample photos by crops, scales, flips and re-encoding) it measures, each in a fresh process:

  ceiling         the compiled Keras network on tensors already decoded and resized (the upper
                  bound of the Keras engine; TensorFlow on a CPU)
  openvino        the same network converted to OpenVINO, float32 and bfloat16 (the upper bound
                  of the OpenVINO engine)
  naive           one model.predict call per image, as simple embedding wrappers do
  in_memory       load every image into one array, then one model.predict (the tutorials' way)
  keras_pipeline  image_dataset_from_directory + map(preprocess_input) + prefetch + predict
  featx           ImageEmbedder from the files with an empty cache, per engine and precision,
                  then with a full cache

then a new process's time to its first batch (conversion included, then from disk),
and what decoding and resizing alone cost (featx's Pillow loader against the Keras pipeline's
tf.data part), peak memory of featx for 1,000 against 10,000 images, and GridSearchCV (5 folds x 4
candidates) with featx inside the Pipeline against one embedding pass plus fitting the heads on
arrays, and against the same search with the embedder uncached.

The table (with the machine's description) is printed and written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    import keras

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "?"
    gpu = ""
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        names = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split("\n")
        gpu = ", ".join(sorted({n.strip() for n in names if n.strip()}))
    except (OSError, subprocess.SubprocessError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem}{'; GPU: ' + gpu if gpu else ''}; "
            f"{cpu_units()}; "
            f"Python {platform.python_version()}, Keras {keras.__version__} ({backend()} backend)")


def cpu_units() -> str:
    """The CPU's bfloat16 and INT8 units, from /proc/cpuinfo's flags (what OpenVINO's bfloat16
    and INT8 speeds depend on)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f
                             if line.startswith(("flags", "Features"))))
    except (OSError, StopIteration):
        return "CPU units unknown"
    bf16 = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"),
                                    ("bf16", "Arm BF16")) if flag in flags]
    int8 = [name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"),
                                    ("avx_vnni", "AVX-VNNI"), ("i8mm", "Arm I8MM"),
                                    ("asimddp", "Arm dot product")) if flag in flags]
    return (f"bfloat16 units: {', '.join(bf16) or 'none'}; "
            f"INT8 units: {', '.join(int8) or 'none'}")


def backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def measure(method: str, backbone: str, folder: Path, n: int, repeats: int,
            **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.measure", method, "--backbone", backbone,
           "--folder", str(folder), "--n", str(n), "--repeats", str(repeats)]
    for key, value in extra.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "skipped" in result:
        print(f"  {method:<15} {backbone:<10} skipped: {result['skipped']}", flush=True)
    else:
        print(f"  {method:<15} {backbone:<10} {n:>6} images  {result['images_per_s']:8.1f} img/s"
              f"  peak {result['peak_rss_mb']:7.0f} MB", flush=True)
    return result


#: Short names of precisions in row labels.
SHORT = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16",
         "int8": "INT8"}


def throughput_table(backbones: list[str], precisions: list[str], engines: list[str],
                     batch: int, folder: Path, n: int, n_naive: int, repeats: int,
                     work: Path) -> list[str]:
    """Per backbone: the model-only ceilings (Keras/TensorFlow per precision, OpenVINO float32,
    bfloat16 and INT8), the usual ways, and featx per engine and precision, all in one run."""
    rows = ["| backbone | method | images | images/s | vs TF ceiling | vs OpenVINO ceiling "
            "| vs Keras pipeline | CPU ms per image | peak RSS (MB) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    ov_precisions = ["float32", "mixed_bfloat16", "int8"]
    for backbone in backbones:
        res: dict[str, dict[str, Any]] = {}
        ceilings: dict[tuple[str, str], float] = {}
        for precision in precisions:
            r = measure("ceiling", backbone, folder, n, repeats, precision=precision,
                        batch_size=batch)
            res[f"Keras ceiling, {SHORT[precision]}"] = r
            ceilings["keras", precision] = r.get("images_per_s", 0.0)
        if "openvino" in engines:
            for precision in ov_precisions:
                r = measure("openvino_ceiling", backbone, folder, n, repeats,
                            precision=precision, batch_size=batch)
                res[f"OpenVINO ceiling, {SHORT[precision]}"] = r
                ceilings["openvino", precision] = r.get("images_per_s", 0.0)
        opts: dict[str, Any] = {"precision": precisions[0], "batch_size": batch,
                                "engine": "keras"}
        res["naive"] = measure("naive", backbone, folder, n_naive, 1, **opts)
        res["in_memory"] = measure("in_memory", backbone, folder, n, repeats, **opts)
        res["keras_pipeline"] = measure("keras_pipeline", backbone, folder, n, repeats, **opts)
        featx_rows = []
        for engine in engines:
            for precision in (ov_precisions if engine == "openvino" else precisions):
                cache = work / f"bench-{backbone}-{engine}-{precision}.h5"
                label = f"featx, {engine}, {SHORT[precision]} (empty cache)"
                res[label] = measure("featx", backbone, folder, n, repeats, cache=cache,
                                     precision=precision, batch_size=batch, engine=engine)
                featx_rows.append((label, engine, precision, cache))
        # The full cache is timed on the default engine's float32 group (the first otherwise).
        default = "openvino" if "openvino" in engines else engines[0]
        label, engine, precision, cache = next(
            (row for row in featx_rows if row[1] == default and row[2] == "float32"),
            featx_rows[0])
        res["featx (full cache)"] = measure("featx", backbone, folder, n, repeats, cache=cache,
                                            full_cache=True, precision=precision,
                                            batch_size=batch, engine=engine)
        rows += _throughput_rows(backbone, res, ceilings, label)
    return rows


def _throughput_rows(backbone: str, res: dict[str, dict[str, Any]],
                     ceilings: dict[tuple[str, str], float], empty_label: str) -> list[str]:
    tf_ceiling = ceilings.get(("keras", "float32")) or next(iter(ceilings.values()))
    keras_speed = res["keras_pipeline"].get("images_per_s")
    rows = []
    for name, r in res.items():
        if "skipped" in r:
            rows.append(f"| {backbone} | {name} | | skipped: {r['skipped']} | | | | | |")
            continue
        speed = r["images_per_s"]
        precision = next((p for p, short in SHORT.items() if f", {short}" in name), "float32")
        ov = ceilings.get(("openvino", precision))
        vs_keras = f"{speed / keras_speed:.2f}x" if keras_speed else "-"
        vs_ov = f"{speed / ov:.2f}x" if ov else "-"
        bold = "**" if name.startswith("featx") and "empty" in name else ""
        rows.append(f"| {backbone} | {name} | {r['images']} | {speed:,.1f} | "
                    f"{bold}{speed / tf_ceiling:.2f}x{bold} | {vs_ov} | {vs_keras} | "
                    f"{r['cpu_ms_per_image']:.2f} | {r['peak_rss_mb']:,.0f} |")
    full = res["featx (full cache)"]["images_per_s"]
    empty = res[empty_label]["images_per_s"]
    rows.append(f"| {backbone} | full cache / {empty_label.replace(' (empty cache)', '')} "
                f"| | | **{full / empty:.0f}x** | | | | |")
    return rows


def first_batch_table(folder: Path, work: Path) -> list[str]:
    """A new process's first batch (32 photos, mobilenet, the default engine): with nothing on
    disk (the conversion included), then with the converted model on disk."""
    home = work / "first-batch-home"
    if home.exists():
        import shutil

        shutil.rmtree(home)
    rows = ["| a new process, mobilenet, 32 photos | process start to first batch (s) | "
            "of which featx (s) | TensorFlow imported |", "|---|---:|---:|---|"]
    for label in ("nothing on disk (conversion included)",
                  "converted model on disk (a later run, or after `featx weights install`)"):
        cmd = [sys.executable, "-m", "benchmarks.first_batch", str(folder)]
        env = {**os.environ, "FEATX_HOME": str(home)}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        r = json.loads(lines[-1])
        print(f"  first batch, {label}: {wall:.2f} s ({r})", flush=True)
        rows.append(f"| {label} | {wall:.2f} | {r['featx_s']:.2f} | {r['tensorflow']} |")
    return rows


def pixels_table(folder: Path, n: int, repeats: int) -> list[str]:
    """Getting pixels ready without a network: what each way costs the CPU per image."""
    rows = ["| no network, mobilenet preprocessing | images | images/s | CPU ms per image |",
            "|---|---:|---:|---:|"]
    for method, label, decoder in (
        ("featx_pixels", "featx, decoder='fast': simplejpeg scaled decode + OpenCV antialiased "
                         "resize", "fast"),
        ("featx_pixels", "featx, decoder='pillow': Pillow decode (draft mode) + antialiased "
                         "resize", "pillow"),
        ("keras_pixels", "Keras: tf.data decode + bilinear resize (no antialiasing) "
                         "+ preprocess_input", None),
    ):
        r = measure(method, "mobilenet", folder, n, repeats, decoder=decoder)
        if "skipped" in r:
            rows.append(f"| {label} | | skipped: {r['skipped']} | |")
        else:
            rows.append(f"| {label} | {r['images']} | {r['images_per_s']:,.0f} | "
                        f"{r['cpu_ms_per_image']:.2f} |")
    return rows


def memory_table(backbone: str, folder_small: Path, folder_big: Path, n_small: int,
                 n_big: int, work: Path) -> list[str]:
    small = measure("featx", backbone, folder_small, n_small, 1, cache=work / "mem-small.h5")
    big = measure("featx", backbone, folder_big, n_big, 1, cache=work / "mem-big.h5")
    ratio = big["peak_rss_mb"] / small["peak_rss_mb"]
    return [
        "| featx, empty cache | images | peak RSS (MB) | ratio |", "|---|---:|---:|---:|",
        f"| {backbone} | {n_small:,} | {small['peak_rss_mb']:,.0f} | 1.00x |",
        f"| {backbone} | {n_big:,} | {big['peak_rss_mb']:,.0f} | **{ratio:.2f}x** |",
    ]


def grid_table(backbone: str, folder: Path, n: int) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.grid", "--backbone", backbone, "--folder",
           str(folder), "--n", str(n)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    r = json.loads(lines[-1])
    base = r["one_pass_s"] + r["heads_on_arrays_s"]
    print(f"  grid search: {r}", flush=True)
    return [
        f"| GridSearchCV 5 folds x 4 candidates, {n} images, {backbone} | seconds | "
        "vs one pass + heads on arrays |", "|---|---:|---:|",
        f"| one embedding pass + the same search on arrays | {base:.1f} | 1.00x |",
        f"| featx (cached) inside the Pipeline | {r['featx_cached_s']:.1f} | "
        f"**{r['featx_cached_s'] / base:.2f}x** |",
        f"| the embedder uncached inside the Pipeline | {r['uncached_s']:.1f} | "
        f"{r['uncached_s'] / base:.2f}x |",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="photos per throughput run")
    parser.add_argument("--naive-images", type=int, default=100)
    parser.add_argument("--memory-images", default="1000,10000")
    parser.add_argument("--grid-images", type=int, default=200)
    parser.add_argument("--backbones", default="mobilenet,resnet50")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", default="float32",
                        help="comma list of: float32, mixed_float16, mixed_bfloat16")
    parser.add_argument("--engines", default=None,
                        help="comma list of: keras, openvino (default: both under TensorFlow)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--skip", default="",
                        help="comma list of: throughput,first,pixels,memory,grid")
    parser.add_argument("--work", default=None, help="folder for photos and caches")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.naive_images, args.memory_images = 64, 8, "64,256"
        args.grid_images, args.repeats = 40, 1
    skip = set(filter(None, args.skip.split(",")))
    engines = (args.engines or ("keras,openvino" if backend() == "tensorflow" else "keras")
               ).split(",")

    from benchmarks.photos import make_photo_folder

    work = Path(args.work or Path(tempfile.gettempdir()) / "featx-bench")
    n_small, n_big = (int(v) for v in args.memory_images.split(","))
    folder = work / f"photos-{max(args.images, args.grid_images, args.naive_images)}"
    make_photo_folder(folder, max(args.images, args.grid_images, args.naive_images))
    started = time.time()
    sections = [f"Machine: {machine()}", ""]
    if "throughput" not in skip:
        print("throughput:", flush=True)
        sections += [f"### Throughput: JPEG photos to embeddings, 224 px, batch "
                     f"{args.batch_size} (fastest of {args.repeats})", "",
                     *throughput_table(args.backbones.split(","), args.precisions.split(","),
                                       engines, args.batch_size, folder, args.images,
                                       args.naive_images, args.repeats, work), ""]
    if "first" not in skip and "openvino" in engines:
        print("first batch:", flush=True)
        sections += ["### A new process's first batch", "", *first_batch_table(folder, work), ""]
    if "pixels" not in skip:
        print("pixels:", flush=True)
        sections += ["### Pixels: decoding and resizing alone, on all cores", "",
                     *pixels_table(folder, args.images, args.repeats), ""]
    if "memory" not in skip:
        print("memory:", flush=True)
        small = work / f"photos-{n_small}"
        big = work / f"photos-{n_big}"
        make_photo_folder(small, n_small)
        make_photo_folder(big, n_big)
        sections += ["### Memory: peak RSS, 1x against 10x the images", "",
                     *memory_table("mobilenet", small, big, n_small, n_big, work), ""]
    if "grid" not in skip:
        print("grid search:", flush=True)
        sections += ["### Grid search: the embedding is paid once", "",
                     *grid_table("mobilenet", folder, args.grid_images), ""]
    python = ".venv/bin/python" if ".venv" in sys.executable else "python3"
    command = " ".join([f"{python} -m benchmarks.run", *(argv or sys.argv[1:])])
    sections.append(f"Total benchmark time: {time.time() - started:.0f} s. Command: `{command}`")
    text = "\n".join(sections) + "\n"
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    name = "latest" + ("" if backend() == "tensorflow" else f"-{backend()}")
    name += "-quick.md" if args.quick else ".md"
    (RESULTS / name).write_text(f"<!-- written by benchmarks/run.py on {stamp} -->\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
