"""Concurrent use: several processes writing one cache at once, and a reader while they write.

Writers hold a shared lock while they add a segment (so they never wait for each other) and
compaction an exclusive one; a reader sees the committed files of one moment. Two writers may
both embed an image the other is embedding; the cache keeps the first row of each key, so every
image is present once in what readers see, and compaction stores it once. GridSearchCV with
``n_jobs=2`` over a cached Pipeline is tested in tests/test_embed_embedder.py.

Nothing here depends on how the processes happen to be scheduled: files are the signals
between the test and its writers (ready, go, first batch committed, resume), each writer is
held after its first commit until the other has committed too (so their runs overlap by
construction, not by luck), and every wait is bounded.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from featx import EmbeddingCache, ImageEmbedder
from featx.embed.images import as_items
from tests.conftest import write_workspace
from tests.test_cli import FEATX

SIZE = 16
N_IMAGES = 180

#: Seconds any one wait (for a signal file, for a process) may take before the test gives up.
WAIT = 180

_WRITER = """
import json, sys, time
from pathlib import Path
import numpy as np
from featx import EmbeddingCache, ImageEmbedder
model, cache, listing, ready, go, first, resume, report, wait = sys.argv[1:]

def wait_for(path, what):
    deadline = time.monotonic() + float(wait)
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} ({path})")
        time.sleep(0.01)

paths = json.loads(Path(listing).read_text())
ImageEmbedder(model, input_size=16).fit_transform(np.zeros((1, 16, 16, 3), np.uint8))  # warm up
Path(ready).touch()
wait_for(go, "the signal to start")
real_append, commits = EmbeddingCache.append, []

def append(self, fingerprint, keys, *args, **kwargs):
    written = real_append(self, fingerprint, keys, *args, **kwargs)
    commits.append(len(keys))
    if len(commits) == 1:  # say which keys the first commit made durable, then hold on
        Path(first + ".tmp").write_text(json.dumps(list(keys)))
        Path(first + ".tmp").replace(first)
        wait_for(resume, "the signal to resume")
    return written

EmbeddingCache.append = append  # the real commit, with a pause after the first one
emb = ImageEmbedder(model, input_size=16, cache=cache, batch_size=2)
emb.fit_transform(paths)
r = emb.report_
Path(report).write_text(json.dumps({"commits": commits, "hits": r.n_hits,
                                    "embedded": r.n_embedded, "failed": r.n_failed}))
"""


def wait_until(condition: Callable[[], bool], what: str,
               children: dict[str, subprocess.Popen[str]], logs: Path) -> None:
    """Poll ``condition`` every 10 ms, at most :data:`WAIT` seconds; fail at once, with its
    log, when a writer exits first."""
    deadline = time.monotonic() + WAIT
    while not condition():
        for name, child in children.items():
            if child.poll() is not None:
                log = (logs / f"{name}.log").read_text()[-2000:]
                raise AssertionError(f"writer {name} exited ({child.returncode}) before {what}: "
                                     f"{log}")
        assert time.monotonic() < deadline, f"gave up after {WAIT} s waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return write_workspace(tmp_path_factory.mktemp("concurrency"), size=SIZE, n_images=N_IMAGES,
                           seed=11, heights=(17, 6), widths=(19, 4))


@pytest.fixture(scope="module")
def paths(workspace) -> list[str]:
    return sorted(str(p) for p in (workspace / "images").iterdir())


@pytest.fixture(scope="module")
def reference(workspace, paths) -> dict[str, np.ndarray]:
    vectors = embedder(workspace).fit_transform(paths)
    keys = [item.key() for item in as_items(paths)[0]]
    return dict(zip(keys, vectors, strict=True))


def embedder(workspace: Path, **kwargs) -> ImageEmbedder:
    return ImageEmbedder(str(workspace / "tiny.keras"), input_size=SIZE, **kwargs)


def check_final(cache: Path, reference: dict[str, np.ndarray], fingerprint: str) -> None:
    """After compaction: every image once, physically too, each row a fresh embedding."""
    EmbeddingCache(cache).compact()
    keys, vectors, _ = EmbeddingCache(cache).read_group(fingerprint)
    assert len(keys) == len(set(keys)) == len(reference)
    assert set(keys) == set(reference)
    for k, v in zip(keys, vectors, strict=True):
        np.testing.assert_allclose(v, reference[k], atol=1e-5)
    with h5py.File(cache, "r") as f:  # the main file alone holds each key once
        grp = f[f"embeddings/{fingerprint}"]
        stored = [k.decode() for k in grp["keys"][: int(grp.attrs["count"])]]
    assert len(stored) == len(set(stored)) == len(reference)
    assert not list(cache.with_name(cache.name + ".segments").glob("*.h5"))


def test_two_writers_and_a_reader_at_once(workspace, paths, reference, tmp_path):
    cache = tmp_path / "emb.h5"
    fingerprint = embedder(workspace).backbone_config().fingerprint
    sets = {"a": paths[:120], "b": paths[60:]}  # 60 images in common, first batches apart
    signal = {kind: {n: tmp_path / f"{n}.{kind}" for n in sets}
              for kind in ("ready", "first", "report")}
    children: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, subset in sets.items():
            (tmp_path / f"{name}.json").write_text(json.dumps(subset))
            args = [sys.executable, "-c", _WRITER, str(workspace / "tiny.keras"), str(cache),
                    str(tmp_path / f"{name}.json"), str(signal["ready"][name]),
                    str(tmp_path / "go"), str(signal["first"][name]), str(tmp_path / "resume"),
                    str(signal["report"][name]), str(WAIT)]
            with open(tmp_path / f"{name}.log", "w") as log:
                children[name] = subprocess.Popen(
                    args, stdout=log, stderr=subprocess.STDOUT, text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        wait_until(lambda: all(p.exists() for p in signal["ready"].values()),
                   "both writers are ready", children, tmp_path)

        # A reader polls while they write: never an error, never a partial or wrong row, and a
        # row once seen never disappears (not even while a merge replaces files).
        all_keys = list(reference)
        state = {"polls": 0, "last": 0, "seen": set(), "reader": EmbeddingCache(cache)}

        def poll() -> int:
            if state["polls"] % 10 == 0:  # sometimes a fresh object, sometimes a warm index
                state["reader"] = EmbeddingCache(cache)
            reader = state["reader"]
            found, vectors = reader.lookup(fingerprint, all_keys)
            for k, v in zip((k for k, f in zip(all_keys, found, strict=True) if f), vectors,
                            strict=True):
                np.testing.assert_allclose(v, reference[k], atol=1e-5)
            groups = reader.groups()
            assert int(found.sum()) >= state["last"], "a row the reader had seen disappeared"
            assert groups == [] or groups[0].rows >= int(found.sum())
            state["last"] = int(found.sum())
            state["seen"].add(state["last"])
            state["polls"] += 1
            return state["last"]

        assert poll() == 0  # nothing written before the writers start
        (tmp_path / "go").touch()
        wait_until(lambda: poll() >= 0 and all(p.exists() for p in signal["first"].values()),
                   "both writers' first commit", children, tmp_path)
        # Both writers have committed a batch and are held, neither finished: their runs
        # overlap, and the reader sees exactly those two commits, from two processes.
        first = {n: set(json.loads(p.read_text())) for n, p in signal["first"].items()}
        assert first["a"] and first["b"] and not first["a"] & first["b"]
        found, _ = EmbeddingCache(cache).lookup(fingerprint, all_keys)
        assert {k for k, f in zip(all_keys, found, strict=True) if f} == first["a"] | first["b"]
        assert poll() == len(first["a"] | first["b"])
        (tmp_path / "resume").touch()
        wait_until(lambda: poll() >= 0 and all(c.poll() is not None for c in children.values()),
                   "both writers to finish", children={}, logs=tmp_path)
        for name, child in children.items():
            assert child.returncode == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
        assert poll() == N_IMAGES  # every image, once the writers are done
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait(timeout=WAIT)
    reports = {n: json.loads(p.read_text()) for n, p in signal["report"].items()}
    a, b = reports["a"], reports["b"]
    assert len(a["commits"]) > 1 and len(b["commits"]) > 1  # each went on after the other's
    assert a["failed"] == b["failed"] == 0
    assert a["hits"] + a["embedded"] == b["hits"] + b["embedded"] == 120
    assert N_IMAGES <= a["embedded"] + b["embedded"] <= 240
    assert len(state["seen"]) >= 3, "the reader never saw the writers' progress"
    print(f"reader: {state['polls']} polls, {len(state['seen'])} distinct row counts; writers "
          f"embedded {a['embedded']} + {b['embedded']} (hits {a['hits']} + {b['hits']})")
    check_final(cache, reference, fingerprint)


def test_two_featx_embed_commands_at_once(workspace, paths, reference, tmp_path):
    cache = tmp_path / "shared.h5"
    listings = []
    for name, subset in {"first": paths[:110], "second": paths[70:]}.items():
        listing = tmp_path / f"{name}.csv"
        with open(listing, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path"])
            writer.writerows([p] for p in subset)
        listings.append(listing)
    # However the two commands interleave (fully, partly or not at all), the result is the same.
    runs = [
        subprocess.Popen(
            [str(FEATX), "embed", str(listing), "--backbone", str(workspace / "tiny.keras"),
             "--input-size", str(SIZE), "--cache", str(cache), "--batch-size", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for listing in listings
    ]
    try:
        for run in runs:
            out, err = run.communicate(timeout=WAIT)
            assert run.returncode == 0, err[-2000:]
            assert "failed 0 of 110 images" in out
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate(timeout=WAIT)
    check_final(cache, reference, embedder(workspace).backbone_config().fingerprint)
    again = embedder(workspace, cache=cache)
    again.fit_transform(paths)
    assert again.report_.n_hits == N_IMAGES and again.report_.n_embedded == 0
