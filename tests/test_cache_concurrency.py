"""Concurrent use: several processes writing one cache at once, and a reader while they write.

Writers hold a shared lock while they add a segment (so they never wait for each other) and
compaction an exclusive one; a reader sees the committed files of one moment. Two writers may
both embed an image the other is embedding; the cache keeps the first row of each key, so every
image is present once in what readers see, and compaction stores it once. GridSearchCV with
``n_jobs=2`` over a cached Pipeline is tested in tests/test_embedder.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
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

_WRITER = """
import json, sys, time
from pathlib import Path
import numpy as np
from featx import ImageEmbedder
model, cache, listing, ready, go, report = sys.argv[1:]
paths = json.loads(Path(listing).read_text())
ImageEmbedder(model, input_size=16).fit_transform(np.zeros((1, 16, 16, 3), np.uint8))  # warm up
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
emb = ImageEmbedder(model, input_size=16, cache=cache, batch_size=2)
start = time.time()
emb.fit_transform(paths)
end = time.time()
r = emb.report_
Path(report).write_text(json.dumps({"start": start, "end": end, "hits": r.n_hits,
                                    "embedded": r.n_embedded, "failed": r.n_failed}))
"""


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
    sets = {"a": paths[:120], "b": paths[60:]}  # 60 images in common
    children = {}
    for name, subset in sets.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(subset))
        args = [sys.executable, "-c", _WRITER, str(workspace / "tiny.keras"), str(cache),
                str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.ready"),
                str(tmp_path / "go"), str(tmp_path / f"{name}.report")]
        children[name] = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    while not all((tmp_path / f"{n}.ready").exists() for n in sets):
        assert all(c.poll() is None for c in children.values()), "a writer died starting up"
    (tmp_path / "go").touch()  # both start embedding at the same moment

    # A reader polls while they write: never an error, never a partial or wrong row, and a
    # row once seen never disappears (not even while compaction replaces the main file).
    all_keys = list(reference)
    polls, seen_counts, last = 0, set(), 0
    reader = EmbeddingCache(cache)
    while any(c.poll() is None for c in children.values()):
        if polls % 10 == 0:
            reader = EmbeddingCache(cache)  # sometimes a fresh object, sometimes a warm index
        found, vectors = reader.lookup(fingerprint, all_keys)
        for k, v in zip((k for k, f in zip(all_keys, found, strict=True) if f), vectors,
                        strict=True):
            np.testing.assert_allclose(v, reference[k], atol=1e-5)
        groups = reader.groups()
        assert int(found.sum()) >= last
        assert groups == [] or groups[0].rows >= int(found.sum())
        last = int(found.sum())
        seen_counts.add(last)
        polls += 1
    for name, child in children.items():
        assert child.wait() == 0, child.stderr.read()[-2000:] if child.stderr else name
    reports = {n: json.loads((tmp_path / f"{n}.report").read_text()) for n in sets}
    a, b = reports["a"], reports["b"]
    assert a["start"] < b["end"] and b["start"] < a["end"], "the writers did not overlap"
    assert a["failed"] == b["failed"] == 0
    assert a["hits"] + a["embedded"] == b["hits"] + b["embedded"] == 120
    assert N_IMAGES <= a["embedded"] + b["embedded"] <= 240
    assert len(seen_counts) > 2, "the reader never saw the writers' progress"
    print(f"reader: {polls} polls, {len(seen_counts)} distinct row counts; writers embedded "
          f"{a['embedded']} + {b['embedded']} (hits {a['hits']} + {b['hits']})")
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
    runs = [
        subprocess.Popen(
            [str(FEATX), "embed", str(listing), "--backbone", str(workspace / "tiny.keras"),
             "--input-size", str(SIZE), "--cache", str(cache), "--batch-size", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        for listing in listings
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        assert "failed 0 of 110 images" in out
    check_final(cache, reference, embedder(workspace).backbone_config().fingerprint)
    again = embedder(workspace, cache=cache)
    again.fit_transform(paths)
    assert again.report_.n_hits == N_IMAGES and again.report_.n_embedded == 0
