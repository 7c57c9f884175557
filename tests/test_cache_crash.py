"""Crashes: ``featx embed`` killed with SIGKILL at every step of a run loses nothing committed.

Each scenario runs the installed ``featx embed`` in a subprocess on the same 96 images and kills
it, either at a named point of the commit protocol (``FEATX_FAULT_INJECT``, see
``featx/_faults.py``) or from outside when the Nth committed file appears, so real timing is
covered too. The scenarios run in parallel (a module fixture); each test then checks, in this
process, what a user would see next:

- the cache opens (every HDF5 file of it opens with h5py; ``groups()`` and ``read_group`` work);
- every row it holds equals a fresh embedding of its image (atol 1e-5), each key once;
- a rerun embeds exactly the images that are missing, and ends with all of them, each once;
- leftovers of the killed run (temporary files) break nothing and are cleaned up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from featx import EmbeddingCache, ImageEmbedder
from featx.embed.images import as_items
from tests.conftest import write_workspace
from tests.test_cli import FEATX

N_IMAGES = 96
BATCH = 2
SIZE = 16


@dataclass(frozen=True)
class Kill:
    """Where a run is killed: a named fault point, or when ``after_files`` files are committed."""

    name: str
    point: str = ""
    after_files: int = 0
    #: What the killed run must leave committed: "nothing", "some" (not all), "all", or "any".
    expect: str = "some"
    #: A glob (under the cache's folder) of the leftover the kill must have left, if any.
    leftover: str = ""
    #: Files per tier before a merge, for the run (``FEATX_MERGE_FANIN``).
    fanin: int = 10


SCENARIOS = [
    Kill("decoding the first batch", point="images.decode:2", expect="nothing"),
    Kill("decoding mid-run", point="images.decode:50", expect="any"),
    Kill("segment half written", point="cache.segment_partial:2", leftover="*.segments/.tmp-*"),
    Kill("segment written, not renamed", point="cache.segment_written:2",
         leftover="*.segments/.tmp-*"),
    Kill("segment just renamed", point="cache.segment_committed:2"),
    Kill("first batch just linked as the main file", point="cache.segment_committed:1"),
    # Merges run as commits go; with two files a tier (tiers of 1, 2, 4, ... rows), from the
    # second commit on.
    Kill("merge into the main file written, not renamed", point="cache.compact_copied:1",
         leftover=".emb.h5.compact-*.tmp", fanin=2),
    Kill("merge into the main file renamed, segments not deleted",
         point="cache.compact_replaced:1", leftover="*.segments/*.h5", fanin=2),
    Kill("merge of segments written, not renamed", point="cache.merge_written:1",
         leftover="*.segments/.tmp-*", fanin=2),
    Kill("merge of segments renamed, inputs not deleted", point="cache.merge_committed:1",
         fanin=2),
    Kill("from outside after the 1st commit", after_files=1, expect="any"),
    Kill("from outside after the 2nd commit", after_files=2, expect="any"),
    Kill("from outside after the 4th commit", after_files=4, expect="any"),
]


@dataclass
class Outcome:
    kill: Kill
    cache: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return write_workspace(tmp_path_factory.mktemp("crash"), size=SIZE, n_images=N_IMAGES,
                           seed=7, heights=(18, 7), widths=(20, 5))


@pytest.fixture(scope="module")
def paths(workspace) -> list[str]:
    return sorted(str(p) for p in (workspace / "images").iterdir())


@pytest.fixture(scope="module")
def reference(workspace, paths) -> dict[str, np.ndarray]:
    """key -> a fresh embedding (no cache), for every image."""
    vectors = make_embedder(workspace).fit_transform(paths)
    keys = [item.key() for item in as_items(paths)[0]]
    assert len(set(keys)) == N_IMAGES
    return dict(zip(keys, vectors, strict=True))


def make_embedder(workspace: Path, **kwargs) -> ImageEmbedder:
    return ImageEmbedder(str(workspace / "tiny.keras"), input_size=SIZE, **kwargs)


def embed_command(workspace: Path, cache: Path) -> list[str]:
    return [str(FEATX), "embed", str(workspace / "images"), "--backbone",
            str(workspace / "tiny.keras"), "--input-size", str(SIZE), "--cache", str(cache),
            "--batch-size", str(BATCH)]


def committed_files(cache: Path) -> int:
    segments = cache.with_name(cache.name + ".segments")
    listed = [p for p in segments.glob("*.h5") if not p.name.startswith(".")] if (
        segments.is_dir()) else []
    return int(cache.exists()) + len(listed)


def run_and_kill(workspace: Path, kill: Kill) -> Outcome:
    folder = workspace / "runs" / kill.name.replace(" ", "-")
    folder.mkdir(parents=True)
    cache = folder / "emb.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FEATX_MERGE_FANIN": str(kill.fanin),
           "FEATX_MERGE_BASE_ROWS": "1"}
    if kill.point:
        env["FEATX_FAULT_INJECT"] = kill.point
    child = subprocess.Popen(embed_command(workspace, cache), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    if kill.after_files:
        def watch() -> None:
            while child.poll() is None:
                if committed_files(cache) >= kill.after_files:
                    child.send_signal(signal.SIGKILL)
                    return
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch)
        watcher.start()
    stdout, stderr = child.communicate(timeout=300)
    if kill.after_files:
        watcher.join()
    return Outcome(kill, cache, child.returncode, stdout, stderr)


def converted_models() -> set[str]:
    """The converted networks the OpenVINO engine keeps in this session's FEATX_HOME."""
    from featx._home import featx_home

    return {p.name for p in (featx_home() / "openvino").glob("*.xml")}


@pytest.fixture(scope="module")
def outcomes(workspace, reference) -> dict[str, Outcome]:
    """Every scenario, run in parallel (each is mostly the child's start-up).

    ``reference`` embedded the images in this process first, so the network is converted for
    OpenVINO once, into the session's FEATX_HOME, and every child reads it from disk (a child
    converting it itself took 6 s against under 2 s; the 13 of them did that at once)."""
    before = converted_models()
    with ThreadPoolExecutor(max(2, min(len(SCENARIOS), 2 * (os.cpu_count() or 1)))) as pool:
        done = pool.map(lambda k: run_and_kill(workspace, k), SCENARIOS)
        results = {o.kill.name: o for o in done}
    assert converted_models() == before, "a killed run converted the network again"
    return results


def check_cache(cache: Path, reference: dict[str, np.ndarray]) -> list[str]:
    """Open everything a cache holds and check every row; return the stored keys."""
    files = [cache] if cache.exists() else []
    segments = cache.with_name(cache.name + ".segments")
    if segments.is_dir():
        files += [p for p in segments.glob("*.h5") if not p.name.startswith(".")]
    for f in files:
        with h5py.File(f, "r") as h5:  # every committed file opens with h5py alone
            assert "featx_cache_format" in h5.attrs, f
    store = EmbeddingCache(cache)
    groups = store.groups()
    if not groups:
        return []
    (group,) = groups
    keys, vectors, sources = store.read_group(group.fingerprint)
    assert len(keys) == len(set(keys)) == group.rows  # each key once
    for key, vector, source in zip(keys, vectors, sources, strict=True):
        np.testing.assert_allclose(vector, reference[key], atol=1e-5, err_msg=source)
    found, got = store.lookup(group.fingerprint, keys)
    assert found.all()
    np.testing.assert_allclose(got, vectors, atol=0)
    return keys


@pytest.mark.parametrize("kill", SCENARIOS, ids=lambda k: k.name)
def test_killed_run_loses_nothing_committed(kill, outcomes, workspace, paths, reference):
    outcome = outcomes[kill.name]
    assert outcome.returncode == -signal.SIGKILL, (outcome.returncode, outcome.stderr[-2000:])
    if kill.leftover:
        assert list(outcome.cache.parent.glob(kill.leftover)), "the kill left no leftover"

    stored = check_cache(outcome.cache, reference)
    print(f"{kill.name}: {len(stored)} of {N_IMAGES} rows committed before the kill")
    if kill.expect == "nothing":
        assert stored == []
    elif kill.expect == "all":
        assert len(stored) == N_IMAGES
    elif kill.expect == "some":
        assert 0 < len(stored) < N_IMAGES, len(stored)
    if kill.after_files:
        assert len(stored) >= 1  # at least the first commit's rows

    # The rerun embeds exactly what is missing, with the killed run's leftovers still around.
    rerun = make_embedder(workspace, cache=outcome.cache)
    out = rerun.fit_transform(paths)
    assert rerun.report_.n_hits == len(stored)
    assert rerun.report_.n_embedded == N_IMAGES - len(stored)
    assert rerun.report_.n_failed == 0
    np.testing.assert_allclose(out, np.stack([reference[k] for k in
                                              (i.key() for i in as_items(paths)[0])]), atol=1e-5)

    EmbeddingCache(outcome.cache).compact()
    assert sorted(check_cache(outcome.cache, reference)) == sorted(reference)
    leftovers = [p.name for p in outcome.cache.parent.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], leftovers  # temporary files of the dead process are cleaned up
    assert committed_files(outcome.cache) == 1  # everything folded into the main file


def test_rerun_through_the_command_embeds_only_the_missing(outcomes, workspace, tmp_path):
    outcome = outcomes["from outside after the 2nd commit"]
    cache = tmp_path / "emb.h5"
    shutil.copy(outcome.cache, cache)
    segments = outcome.cache.with_name(outcome.cache.name + ".segments")
    if segments.is_dir():
        shutil.copytree(segments, tmp_path / "emb.h5.segments")
    stored = EmbeddingCache(cache).groups()[0].rows
    rerun = subprocess.run(embed_command(workspace, cache), capture_output=True, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (f"embedded {N_IMAGES - stored}, already cached {stored}, failed 0 of {N_IMAGES} "
            "images") in rerun.stdout
    assert EmbeddingCache(cache).groups()[0].rows == N_IMAGES
