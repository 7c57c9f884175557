"""Heads at scale: featx heads on 100k and 1M cached rows, the scalable heads against their exact
counterparts, and kNN on a faiss index against exact search.

    .venv/bin/python -m benchmarks.heads_scale [--sizes 100000,1000000] [--accuracy-rows 50000]
        [--knn-rows 1000000] [--knn-queries 100000]
        [--parts base,cli,accuracy,knn] [--dir DIR]

Rows whose class structure comes from real embeddings: the demo's Fashion-MNIST images (8,000
training and 2,000 test images, 10 classes) embedded once by the offline ImageNet MobileNet at
160 px (1,024 wide), then resampled with Gaussian noise (0.5 x each dimension's standard
deviation): a training row is a noisy copy of a training image's embedding, a test row of a
test image's, so no test row is a copy of a training image.

  cli       for each size N: N training rows and N/10 test rows written into a cache under the
            MobileNet group, N + N/10 small stand-in files whose content keys are those rows'
            keys (the rows are what an embedding of them would be; nothing is decoded: every
            image is a cache hit), then `featx heads TRAIN --test TEST --cache FILE` with its
            default heads in a fresh process: wall time, time per row, peak RSS; ratios of the
            largest size against the smallest
  accuracy  at --accuracy-rows training rows (10,000 test rows), each scalable head against its
            exact in-memory counterpart at the exact head's best grid value on the demo
            (logreg C=0.01 / logreg_sgd; rbf_svm C=10 / rbf_svm_approx; knn k=10 /
            knn_faiss k=10; hist_gb / gb_xgb, and hist_gb / hist_gb on a 20,000-row sample,
            what featx runs above 20,000 rows); --accuracy-heads hist_gb runs only those pairs
  knn       knn_faiss built on --knn-rows rows (the resident memory it holds afterwards);
            --knn-queries queries timed, then the first 10,000 at half and twice the cells
            searched; recall@10 against exact search (faiss's flat index) on 1,000 of them;
            what saving it adds to the peak RSS

Prints a table and writes benchmarks/results/heads-scale.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
NOISE = 0.5


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def base(folder: Path) -> dict[str, Any]:
    """The real embeddings everything is resampled from (computed once, kept in --dir)."""
    out = folder / "base.npz"
    if not out.exists():
        from featx import ImageEmbedder
        from featx.data.datasets import load_fashion_mnist

        X_tr, y_tr, _ = load_fashion_mnist("train", 8000)
        X_te, y_te, _ = load_fashion_mnist("test", 2000)
        emb = ImageEmbedder("mobilenet", input_size=160, cache=str(folder / "base.h5"))
        E_tr, E_te = emb.fit_transform(X_tr), emb.transform(X_te)
        from featx.cache.store import EmbeddingCache

        info = EmbeddingCache(folder / "base.h5").groups()[0]
        np.savez(out, X_tr=E_tr, y_tr=y_tr, X_te=E_te, y_te=y_te)
        (folder / "group.json").write_text(json.dumps(
            {"fingerprint": info.fingerprint, "fields": info.fields, "label": info.label}))
    d = np.load(out)
    return {"X_tr": d["X_tr"], "y_tr": d["y_tr"], "X_te": d["X_te"], "y_te": d["y_te"],
            "group": json.loads((folder / "group.json").read_text())}


def resample(X: np.ndarray, y: np.ndarray, n: int, seed: int,
             lo: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows lo..lo+n of the seeded resampled stream (any part of it, the same rows every time)."""
    sd = X.std(axis=0)
    parts_x, parts_y = [], []
    for start in range(lo - lo % 65536, lo + n, 65536):
        rng = np.random.default_rng([seed, start // 65536])
        pick = rng.integers(0, len(X), 65536)
        noise = rng.standard_normal((65536, X.shape[1]), dtype=np.float32)
        a, b = max(lo, start) - start, min(lo + n, start + 65536) - start
        parts_x.append(X[pick[a:b]] + NOISE * sd * noise[a:b])
        parts_y.append(y[pick[a:b]])
    return np.concatenate(parts_x).astype(np.float32), np.concatenate(parts_y)


def key_of(kind: str, i: int) -> bytes:
    return f"featx heads_scale {kind} row {i}\n".encode()


def write_set(folder: Path, data: dict[str, Any], cache: Path, kind: str, n: int, seed: int,
              X: np.ndarray, y: np.ndarray) -> None:
    """n stand-in files in one folder per class, their rows in the cache under their keys."""
    import hashlib

    from featx.cache.store import EmbeddingCache

    store = EmbeddingCache(cache)
    group = data["group"]
    root = folder / kind
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    step = 65536
    for lo in range(0, n, step):
        rows, labels = resample(X, y, min(step, n - lo), seed, lo)
        keys, sources = [], []
        for j in range(len(rows)):
            content = key_of(kind, lo + j)
            path = root / f"class{labels[j]}" / f"{lo + j:08d}.png"
            path.write_bytes(content)
            keys.append(hashlib.sha256(content).hexdigest())
            sources.append(str(path))
        store.append(group["fingerprint"], keys, rows, sources, fields=group["fields"],
                     label=group["label"])


class Launcher:
    """Starts the measured commands from a small process made before this one grows.

    A child forked from a large process starts with the parent's pages counted as its own, and
    Linux keeps that in the child's peak RSS across ``exec``: ``featx heads`` started from this
    process, after it wrote a million rows, reported this process's size as part of its peak.
    Forked from the launcher (tens of MB), the child's peak is its own."""

    CODE = (
        "import json, os, subprocess, sys, threading, time\n"
        "def rss(pid):\n"
        "    try:\n"
        "        with open(f'/proc/{pid}/status') as f:\n"
        "            return next(int(l.split()[1]) for l in f if l.startswith('VmRSS'))\n"
        "    except (OSError, StopIteration):\n"
        "        return 0\n"
        "for line in sys.stdin:\n"
        "    child = subprocess.Popen(json.loads(line), stdout=subprocess.PIPE,\n"
        "                             stderr=subprocess.STDOUT, text=True)\n"
        "    last, phases, done = ['(starting)'], {}, []\n"
        "    def sample():\n"
        "        while not done:\n"
        "            kb, tag = rss(child.pid), last[0]\n"
        "            phases[tag] = max(phases.get(tag, 0), kb)\n"
        "            time.sleep(0.2)\n"
        "    sampler = threading.Thread(target=sample, daemon=True)\n"
        "    sampler.start()\n"
        "    log = []\n"
        "    for out in child.stdout:\n"
        "        log.append(out)\n"
        "        if out.strip():\n"
        "            last[0] = out.strip()[:80]\n"
        "    _, status, usage = os.wait4(child.pid, 0)\n"
        "    done.append(1)\n"
        "    sampler.join()\n"
        "    print(json.dumps([status, usage.ru_maxrss, ''.join(log), phases]), flush=True)\n")
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str]) -> tuple[int, int, str, dict[str, int]]:
        """Run ``argv`` to its end: its exit status, peak RSS in kB, its output, and the
        largest resident memory sampled (every 0.2 s, kB) after each line it printed."""
        if self._proc is None:
            self.start()
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(argv) + "\n")
        self._proc.stdin.flush()
        status, peak_kb, log, phases = json.loads(self._proc.stdout.readline())
        return int(status), int(peak_kb), str(log), dict(phases)


LAUNCHER = Launcher()


def part_cli(folder: Path, data: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    featx = Path(sys.executable).with_name("featx")
    for n in sizes:
        work = folder / f"cli-{n}"
        cache = work / "emb.h5"
        if not (work / "done").exists():
            t0 = time.perf_counter()
            write_set(work, data, cache, "train", n, 1, data["X_tr"], data["y_tr"])
            write_set(work, data, cache, "test", n // 10, 2, data["X_te"], data["y_te"])
            (work / "done").write_text("")
            print(f"  wrote {n:,} + {n // 10:,} rows and files in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        status, peak_kb, log, phases = LAUNCHER.run(
            [str(featx), "heads", str(work / "train"), "--test", str(work / "test"),
             "--cache", str(cache), "--out", str(work / "out")])
        seconds = time.perf_counter() - t0
        (work / "log.txt").write_text(log)
        if status != 0:
            raise RuntimeError(f"featx heads on {n} rows failed:\n{log[-3000:]}")
        top = sorted(phases.items(), key=lambda kv: -kv[1])[:5]
        out[str(n)] = {"seconds": seconds, "seconds_per_row": seconds / n,
                       "peak_rss_mb": peak_kb / 1024,
                       "largest_phases": [[tag, kb / 1024] for tag, kb in top],
                       "leaderboard": [line for line in log.splitlines()
                                       if line.startswith(("#", "1 ", "2 ", "3 ", "4 ", "  "))]}
        print(f"  featx heads on {n:,} rows: {seconds:.0f} s, peak RSS "
              f"{peak_kb / 1024:.0f} MB; largest resident memory sampled after the line:",
              flush=True)
        for tag, kb in top:
            print(f"    {kb / 1024:6.0f} MB  {tag}", flush=True)
    return out


def part_accuracy(data: dict[str, Any], rows: int, only: set[str] | None = None
                  ) -> dict[str, Any]:
    """Each pair's exact head and scalable head on ``rows`` resampled rows, tested on 10,000;
    ``only``: the pairs (by exact head) to run."""
    from featx import make_head
    from featx.heads.knn_index import IndexKNNClassifier

    X, y = resample(data["X_tr"], data["y_tr"], rows, 1)
    Xt, yt = resample(data["X_te"], data["y_te"], 10_000, 2)
    sample = np.random.default_rng(0).choice(rows, min(rows, 20_000), replace=False)
    pairs = [
        ("logreg", make_head("logreg", clf__C=0.01), "logreg_sgd", make_head("logreg_sgd")),
        ("rbf_svm", make_head("rbf_svm", clf__C=10.0), "rbf_svm_approx",
         make_head("rbf_svm_approx")),
        ("knn", make_head("knn", clf__n_neighbors=10), "knn_faiss",
         IndexKNNClassifier(10, exact_below=1)),
        ("hist_gb", make_head("hist_gb"), "gb_xgb", make_head("gb_xgb")),
        ("hist_gb", make_head("hist_gb"), "hist_gb (20k sample)", make_head("hist_gb")),
    ]
    out: dict[str, Any] = {}
    exact_done: dict[str, Any] = {}
    for exact_name, exact, scalable_name, scalable in pairs:
        if only and exact_name not in only:
            continue
        # The same exact head against another scalable one is fitted once.
        row: dict[str, Any] = ({exact_name: exact_done[exact_name]} if exact_name in exact_done
                               else {})
        fits = [] if row else [(exact_name, exact, X, y)]
        fits.append((scalable_name, scalable, *((X[sample], y[sample])
                                                if "sample" in scalable_name else (X, y))))
        for name, est, X_fit, y_fit in fits:
            t0 = time.perf_counter()
            est.fit(X_fit, y_fit)
            fit = time.perf_counter() - t0
            row[name] = {"accuracy": float(est.score(Xt, yt)), "fit_seconds": fit}
            print(f"  {name}: {row[name]['accuracy']:.4f} ({fit:.0f} s)", flush=True)
        exact_done[exact_name] = row[exact_name]
        out[f"{exact_name} / {scalable_name}"] = {"exact": exact_name, "scalable": scalable_name,
                                                   **row}
    return out


def resampled_source(data: dict[str, Any], rows: int) -> Any:
    """The resampled training rows as a block source, made a block at a time: never all in
    memory."""
    from featx.heads.rows import ArrayBlocks

    class Resampled(ArrayBlocks):
        def __init__(self, n: int) -> None:
            self.n, self.block_rows = n, 65536
            self._classes = np.arange(10)

        @property
        def n_rows(self) -> int:
            return self.n

        @property
        def width(self) -> int:
            return int(data["X_tr"].shape[1])

        def blocks(self, seed: int | None = 0):  # type: ignore[no-untyped-def]
            for lo in range(0, self.n, self.block_rows):
                yield resample(data["X_tr"], data["y_tr"], min(self.block_rows, self.n - lo),
                               1, lo)

        def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
            return resample(data["X_tr"], data["y_tr"], min(n, self.n), 1, 0)

    return Resampled(rows)


def exact_neighbours(data: dict[str, Any], rows: int, head: Any, queries: np.ndarray
                     ) -> np.ndarray:
    """The 10 exact nearest training rows of each query, in the head's scaled space, by blocks."""
    import faiss

    scaled = head.scaler_.transform(queries).astype(np.float32)
    best_d = np.full((len(queries), 10), np.inf, np.float32)
    best_i = np.full((len(queries), 10), -1, np.int64)
    at = 0
    for X, _ in resampled_source(data, rows).blocks():
        flat = faiss.IndexFlatL2(X.shape[1])
        flat.add(head.scaler_.transform(X).astype(np.float32))
        d, i = flat.search(scaled, 10)
        d_all = np.concatenate([best_d, d], axis=1)
        i_all = np.concatenate([best_i, i + at], axis=1)
        order = np.argsort(d_all, axis=1)[:, :10]
        best_d = np.take_along_axis(d_all, order, axis=1)
        best_i = np.take_along_axis(i_all, order, axis=1)
        at += len(X)
    return best_i


def resident_mb() -> float:
    """This process's resident memory now (VmRSS), MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def part_knn(data: dict[str, Any], rows: int, queries: int, nlist: int | None = None
             ) -> dict[str, Any]:
    """knn_faiss built on ``rows`` rows; ``queries`` queries at its default cells searched, then
    the first 10,000 at fewer and more; recall@10 against exact search on 1,000 of them."""
    import gc

    from featx.heads.knn_index import IndexKNNClassifier

    gc.collect()
    before, resident_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, \
        resident_mb()
    t0 = time.perf_counter()
    head = IndexKNNClassifier(10, nlist=nlist).fit_stream(resampled_source(data, rows))
    build = time.perf_counter() - t0
    gc.collect()
    held = resident_mb() - resident_before
    Q, _ = resample(data["X_te"], data["y_te"], queries, 2)
    t0 = time.perf_counter()
    _, approx = head.kneighbors(Q)
    search = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    truth = exact_neighbours(data, rows, head, Q[:1000])

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                              zip(found[:1000], truth, strict=True)]))

    default = head.nprobe_
    runs = [{"nprobe": default, "seconds_10k": search * 10_000 / queries,
             "recall_at_10": recall(approx)}]
    for nprobe in (default // 2, default * 2):
        head.nprobe_ = nprobe
        t0 = time.perf_counter()
        _, found = head.kneighbors(Q[:10_000])
        runs.append({"nprobe": nprobe, "seconds_10k": time.perf_counter() - t0,
                     "recall_at_10": recall(found)})
        print(f"  knn_faiss at {rows:,} rows, {nprobe} cells: 10,000 queries in "
              f"{runs[-1]['seconds_10k']:.1f} s, recall@10 {runs[-1]['recall_at_10']:.3f}",
              flush=True)
    head.nprobe_ = default
    save = saving_memory(head)
    out = {"rows": rows, "queries": queries, "build_seconds": build,
           "search_seconds": search, "recall_at_10": runs[0]["recall_at_10"],
           "index": head.index_kind_, "nlist": head.nlist_, "nprobe": default,
           "held_mb": held, "peak_rss_mb": peak, "rss_before_mb": before, "runs": runs,
           "save": save}
    print(f"  knn_faiss: {rows:,} rows built in {build:.0f} s (holding {held:.0f} MB), "
          f"{queries:,} queries in {search:.0f} s, recall@10 {out['recall_at_10']:.3f}, "
          f"peak RSS {peak:.0f} MB", flush=True)
    return out


def saving_memory(head: Any) -> dict[str, float]:
    """What saving the fitted head adds to the peak RSS: its index written as a member of its
    own (``write_index``, what a ``.featx`` file does now), then inside skops's bytes (before)."""
    import skops.io as sio

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory() as tmp:
        start = peak()
        t0 = time.perf_counter()
        head.write_index(Path(tmp) / "index.bin")
        member_s, member_peak = time.perf_counter() - t0, peak()
        size = (Path(tmp) / "index.bin").stat().st_size / 2**20
    t0 = time.perf_counter()
    data = sio.dumps(head)
    skops_s, skops_peak = time.perf_counter() - t0, peak()
    del data
    out = {"index_mb": size, "peak_before_mb": start, "member_added_mb": member_peak - start,
           "member_seconds": member_s, "skops_added_mb": skops_peak - member_peak,
           "skops_seconds": skops_s}
    print(f"  saving the {size:.0f} MB index: as a member of its own +{out['member_added_mb']:.0f}"
          f" MB peak in {member_s:.1f} s; inside skops's bytes +{out['skops_added_mb']:.0f} MB "
          f"in {skops_s:.1f} s", flush=True)
    return out


def table(results: dict[str, Any]) -> str:
    lines = [f"# Heads at scale ({results['when']})", "", f"Machine: {results['cpu']}.", ""]
    cli = results.get("cli")
    if cli:
        sizes = sorted(cli, key=int)
        small = cli[sizes[0]]
        lines += ["| featx heads, default heads | rows | wall s | s per 1k rows | ratio | "
                  "peak RSS MB | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
        for n in sizes:
            r = cli[n]
            lines.append(
                f"| {int(n):,} train + {int(n) // 10:,} test | {int(n):,} | {r['seconds']:.0f} | "
                f"{1000 * r['seconds_per_row']:.3f} | "
                f"{r['seconds_per_row'] / small['seconds_per_row']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / small['peak_rss_mb']:.2f} |")
        for n in sizes:
            lines += ["", f"Leaderboard at {int(n):,} rows:", "", "```",
                      *cli[n]["leaderboard"], "```"]
            if cli[n].get("largest_phases"):
                lines += ["", "Largest resident memory sampled (every 0.2 s) after the line "
                          "the command printed last:", ""]
                lines += [f"- {mb:.0f} MB after `{tag}`" for tag, mb in cli[n]["largest_phases"]]
    acc = results.get("accuracy")
    if acc:
        lines += ["", f"| at {results['accuracy_rows']:,} rows | exact | accuracy | fit s | "
                  "scalable | accuracy | fit s | difference (points) |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for r in acc.values():
            e, s = r[r["exact"]], r[r["scalable"]]
            lines.append(f"| | {r['exact']} | {e['accuracy']:.4f} | {e['fit_seconds']:.0f} | "
                         f"{r['scalable']} | {s['accuracy']:.4f} | {s['fit_seconds']:.0f} | "
                         f"{100 * (s['accuracy'] - e['accuracy']):+.2f} |")
    knn = results.get("knn")
    if knn:
        lines += ["", f"knn_faiss ({knn['index']}, nlist {knn['nlist']}, nprobe {knn['nprobe']}):"
                  f" {knn['rows']:,} rows indexed in {knn['build_seconds']:.0f} s, holding "
                  f"{knn.get('held_mb', float('nan')):.0f} MB of resident memory afterwards; "
                  f"{knn['queries']:,} queries in {knn['search_seconds']:.0f} s; recall@10 "
                  f"{knn['recall_at_10']:.3f} against exact search; peak RSS "
                  f"{knn['peak_rss_mb']:.0f} MB (the benchmark's own arrays included: "
                  f"{knn['rss_before_mb']:.0f} MB before the index)."]
        save = knn.get("save")
        if knn.get("runs"):
            lines += ["", "| cells searched | seconds per 10,000 queries | recall@10 |",
                      "|---:|---:|---:|"]
            lines += [f"| {r['nprobe']} | {r['seconds_10k']:.1f} | {r['recall_at_10']:.3f} |"
                      for r in knn["runs"]]
        if save:
            lines += [f"Saving its {save['index_mb']:.0f} MB index: as a .featx member of its own "
                      f"+{save['member_added_mb']:.0f} MB peak RSS ({save['member_seconds']:.1f} s)"
                      f"; inside skops's bytes (before) +{save['skops_added_mb']:.0f} MB "
                      f"({save['skops_seconds']:.1f} s)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--accuracy-rows", type=int, default=50_000)
    p.add_argument("--accuracy-heads", default=None, help="the pairs to run, by exact head "
                   "(e.g. hist_gb); the others keep their earlier results")
    p.add_argument("--knn-rows", type=int, default=1_000_000)
    p.add_argument("--knn-queries", type=int, default=100_000)
    p.add_argument("--knn-nlist", type=int, default=None, help="the kNN index's cells "
                   "(default: the head's own choice)")
    p.add_argument("--parts", default="base,cli,accuracy,knn")
    p.add_argument("--dir", default=None, help="where the rows and files go (default: a "
                   "temporary folder, removed at the end)")
    args = p.parse_args(argv)
    LAUNCHER.start()  # while this process is small: see Launcher
    parts = set(args.parts.split(","))
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="featx-heads-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "heads-scale.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    results |= {"cpu": cpu(), "when": time.strftime("%Y-%m-%d")}
    data = base(folder)
    if "cli" in parts:
        # Sizes not run this time keep their earlier results.
        results["cli"] = {**results.get("cli", {}),
                          **part_cli(folder, data, [int(s) for s in args.sizes.split(",")])}
    if "accuracy" in parts:
        only = set(args.accuracy_heads.split(",")) if args.accuracy_heads else None
        earlier = results.get("accuracy", {}) if only else {}
        earlier = {(f"{v['exact']} / {v['scalable']}"): v for v in earlier.values()}
        results["accuracy"] = {**earlier, **part_accuracy(data, args.accuracy_rows, only)}
        results["accuracy_rows"] = args.accuracy_rows
    if "knn" in parts:
        results["knn"] = part_knn(data, args.knn_rows, args.knn_queries, args.knn_nlist)
    results.pop("knn_settings", None)  # the in-memory index's settings: see git history
    RESULTS.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1))
    text = table(results)
    (RESULTS / "heads-scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
