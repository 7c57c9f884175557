"""How do HDF5 write strategies survive ``kill -9``? The measurement behind docs/robustness.md.

Each trial starts a writer process that appends batches of rows (64 rows of 256 float32, a key
per row) to an HDF5 file and reports on stdout each batch it has committed; after a random delay
the parent kills it with SIGKILL and then checks the file:

- *opens*: the file (or cache) can be opened again, for reading and for the next write;
- *lost*: rows whose commit the writer had reported but that cannot be read back intact.

Strategies:

``inplace``     one ``h5py.File(path, "a")`` kept open; resize, write, bump ``count``, ``flush()``
``reopen``      the same, but the file is opened and closed around every batch (featx 0.1 at first)
``swmr``        HDF5 single-writer/multiple-reader mode (``libver="latest"``, ``swmr_mode=True``)
``segments``    featx's :class:`~featx.EmbeddingCache`: each batch an atomically renamed file

SIGKILL leaves every ``write()`` the process made in the kernel's page cache, so it is the mild
crash. A power cut or a kernel panic keeps an arbitrary subset of the pages written since the
last sync. ``--torn`` models that for an in-place append: after k committed batches (synced),
batch k+1 is appended and only a random half of the 4 KiB pages it changed reach the disk. A
segment is written in full and synced before its rename, so the same cut leaves it either absent
or complete: no model is needed there.

Run: ``.venv/bin/python -m benchmarks.crash_modes [--trials 40]``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS, WIDTH = 64, 256
STRATEGIES = ("inplace", "reopen", "swmr", "segments")


def _row(i: int) -> np.ndarray:
    return np.full(WIDTH, float(i), np.float32) + np.arange(WIDTH, dtype=np.float32) / 1024


def _key(i: int) -> str:
    return f"{i:064x}"


# ---- the writer (child process) -----------------------------------------------------------------


def _writer(strategy: str, path: Path) -> None:
    import h5py

    if strategy == "segments":
        from featx.cache.store import EmbeddingCache  # imported before the clock starts

    def batch(b: int) -> tuple[list[str], np.ndarray]:
        ids = range(b * ROWS, (b + 1) * ROWS)
        return [_key(i) for i in ids], np.stack([_row(i) for i in ids])

    def create(f: h5py.File) -> None:
        f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S64", chunks=(256,))
        f.create_dataset("vectors", shape=(0, WIDTH), maxshape=(None, WIDTH), dtype="float32",
                         chunks=(256, WIDTH))
        f.attrs["count"] = 0

    def append(f: h5py.File, keys: list[str], vectors: np.ndarray) -> None:
        n = int(f.attrs["count"])
        f["keys"].resize(n + ROWS, axis=0)
        f["vectors"].resize(n + ROWS, axis=0)
        f["keys"][n:] = np.array(keys, dtype="S64")
        f["vectors"][n:] = vectors
        f.attrs["count"] = n + ROWS
        f.flush()

    print("ready", flush=True)
    if strategy == "inplace":
        with h5py.File(path, "w") as f:
            create(f)
            for b in range(10**6):
                append(f, *batch(b))
                print(b, flush=True)
    elif strategy == "reopen":
        with h5py.File(path, "w") as f:
            create(f)
        for b in range(10**6):
            with h5py.File(path, "a") as f:
                append(f, *batch(b))
            print(b, flush=True)
    elif strategy == "swmr":
        with h5py.File(path, "w", libver="latest") as f:
            create(f)
            f.swmr_mode = True
            for b in range(10**6):
                n = b * ROWS
                keys, vectors = batch(b)
                f["keys"].resize(n + ROWS, axis=0)
                f["vectors"].resize(n + ROWS, axis=0)
                f["keys"][n:] = np.array(keys, dtype="S64")
                f["vectors"][n:] = vectors
                f.flush()  # attributes cannot change in SWMR mode: the dataset length is the count
                print(b, flush=True)
    else:
        cache = EmbeddingCache(path)
        for b in range(10**6):
            keys, vectors = batch(b)
            cache.append("fp", keys, vectors, ["s"] * ROWS)
            print(b, flush=True)


# ---- checking what a kill left ---------------------------------------------------------------


def _check(strategy: str, path: Path, committed: int) -> tuple[bool, int, int, str]:
    """(opens, rows lost, wrong rows served, error) after ``committed`` reported batches."""
    import h5py

    want = committed * ROWS
    try:
        if strategy == "segments":
            from featx.cache.store import EmbeddingCache

            cache = EmbeddingCache(path)
            keys, vectors, _ = cache.read_group("fp") if cache.exists() else ([], None, [])
            cache.append("fp", [_key(10**8)], _row(0)[None], ["probe"])  # the next write works
        else:
            kwargs = {"swmr": True} if strategy == "swmr" else {}
            with h5py.File(path, "r", **kwargs) as f:
                n = len(f["keys"]) if strategy == "swmr" else int(f.attrs["count"])
                keys = [k.decode() for k in f["keys"][:n]]
                vectors = f["vectors"][:n]
            with h5py.File(path, "a", **({"libver": "latest"} if strategy == "swmr" else {})):
                pass  # the next writer can open it
    except Exception as exc:  # noqa: BLE001 - any failure to open is what we measure
        return False, want, 0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    good, bad = set(), 0
    for k, v in zip(keys, vectors if vectors is not None else [], strict=True):
        i = int(k, 16) if k and all(c in "0123456789abcdef" for c in k) else -1
        if 0 <= i < 10**8 and np.array_equal(v, _row(i)):
            good.add(i)
        elif i != 10**8:  # the probe row the check itself appended
            bad += 1
    lost = sum(1 for i in range(want) if i not in good)
    error = f"{bad} rows served with wrong content" if bad else ""
    return True, lost, bad, error


Outcome = tuple[bool, int, int, int, str]  # opens, rows committed, rows lost, wrong rows, error


def _trial(strategy: str, folder: Path, rng: random.Random) -> Outcome:
    path = folder / f"{strategy}.h5"
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.crash_modes", "--child", strategy, str(path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.05, 0.6))
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    committed = sum(1 for line in out.split() if line.isdigit())
    opens, lost, bad, error = _check(strategy, path, committed)
    return opens, committed * ROWS, lost, bad, error


def _torn_trial(folder: Path, rng: random.Random) -> Outcome:
    import h5py

    path = folder / "torn.h5"
    k = rng.randint(1, 6)
    with h5py.File(path, "w") as f:
        f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S64", chunks=(256,))
        f.create_dataset("vectors", shape=(0, WIDTH), maxshape=(None, WIDTH), dtype="float32",
                         chunks=(256, WIDTH))
        f.attrs["count"] = 0
    before = b""
    for b in range(k + 1):
        if b == k:
            before = path.read_bytes()  # what is on disk after k synced batches
        with h5py.File(path, "a") as f:
            n = int(f.attrs["count"])
            for name in ("keys", "vectors"):
                f[name].resize(n + ROWS, axis=0)
            f["keys"][n:] = np.array([_key(i) for i in range(n, n + ROWS)], dtype="S64")
            f["vectors"][n:] = np.stack([_row(i) for i in range(n, n + ROWS)])
            f.attrs["count"] = n + ROWS
    after = path.read_bytes()
    torn = bytearray(after)
    page = 4096
    for start in range(0, len(after), page):
        old = before[start : start + page]
        if old != after[start : start + page] and rng.random() < 0.5:
            torn[start : start + page] = old.ljust(len(after[start : start + page]), b"\0")
    path.write_bytes(bytes(torn))
    opens, lost, bad, error = _check("inplace", path, k)
    return opens, k * ROWS, lost, bad, error


def _summarise(name: str, outcomes: list[Outcome]) -> str:
    opened = sum(o[0] for o in outcomes)
    committed, lost, bad = (sum(o[i] for o in outcomes) for i in (1, 2, 3))
    errors = [o[4] for o in outcomes if o[4]]
    return (f"{name:16} {opened:>3}/{len(outcomes):<4} {committed:>10} {lost:>6} {bad:>6}  "
            f"{errors[0] if errors else '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--torn", type=int, default=200, metavar="N",
                        help="trials of the power-cut model (see above)")
    parser.add_argument("--child", nargs=2, metavar=("STRATEGY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _writer(args.child[0], Path(args.child[1]))
        return
    rng = random.Random(0)
    print(f"batches of {ROWS} rows x {WIDTH} float32; 'wrong': rows served with wrong content")
    print(f"{'crash / strategy':16} {'opens':>8} {'committed':>10} {'lost':>6} {'wrong':>6}  "
          "first error")
    for strategy in STRATEGIES:
        outcomes = []
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                outcomes.append(_trial(strategy, Path(tmp), rng))
        print(_summarise(f"SIGKILL {strategy}", outcomes), flush=True)
    outcomes = []
    for _ in range(args.torn):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(_torn_trial(Path(tmp), rng))
    print(_summarise("power-cut model, in-place", outcomes))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
