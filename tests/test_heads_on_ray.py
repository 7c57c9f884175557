"""One SGDHead trained data-parallel on a real local Ray cluster (two one-CPU nodes) from a
cache's files: as accurate as one process, every worker trains, the result is an ordinary
SGDHead, only the labelled rows of the part are read, and a worker's death is named."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

from featx.cache.store import EmbeddingCache
from featx.distributed.cluster import ClusterError
from featx.exceptions import FeatxError
from featx.heads.on_ray import average_models, combine_moments, fit_on_ray
from featx.heads.rows import ArrayBlocks, CachedBlocks
from featx.heads.scalable import SGDHead, fit_scaler

FP = "fp-on-ray"
WIDTH = 16
CLASSES = np.array(["a", "b", "c"])


def _key(i: int) -> str:
    """A content key as the cache stores them. Not ``f"{i:064x}"``: keys sharing their first
    8 bytes are the index's slow path (one comparison each), which sha256 keys never take."""
    return hashlib.sha256(str(i).encode()).hexdigest()


class Data:
    """A cache of Gaussian class clusters: 3,000 labelled rows (fit 70%, valid 15%, test 15%)
    written class by class in six appends (six files), plus 600 unlabelled rows of a fourth
    cluster far from the rest."""

    def __init__(self, root: Path):
        rng = np.random.default_rng(0)
        n = 3000
        self.y = np.repeat(CLASSES, n // 3)
        codes = np.repeat(np.arange(3), n // 3)
        self.X = (rng.normal(size=(n, WIDTH)) + 2.0 * np.eye(3, WIDTH)[codes] + 5.0)
        self.X = self.X.astype(np.float32)
        self.keys = [_key(i) for i in range(n)]
        self.part = rng.choice(np.array([0, 1, 2], np.int8), size=n, p=[0.7, 0.15, 0.15])
        extra = (rng.normal(size=(600, WIDTH)) - 8.0).astype(np.float32)
        self.path = root / "emb.h5"
        cache = EmbeddingCache(self.path)
        for lo in range(0, n, 500):  # class by class, as folders are embedded
            cache.append(FP, self.keys[lo:lo + 500], self.X[lo:lo + 500], ["s"] * 500)
        cache.append(FP, [_key(n + i) for i in range(600)], extra, ["u"] * 600)
        self.parts = CachedBlocks.split(self.path, FP, self.keys, self.y, self.part,
                                        block_rows=1024)

    def rows(self, code: int) -> tuple[np.ndarray, np.ndarray]:
        return self.X[self.part == code], self.y[self.part == code]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("heads_on_ray"))


def test_two_workers_match_one_process_and_each_trains(cluster, data):
    fit, valid = data.parts["fit"], data.parts["valid"]
    assert len(EmbeddingCache(data.path)._files.indexes()) >= 2  # several files to read
    single = SGDHead(max_epochs=4, random_state=0).fit_stream(fit, valid=valid)
    seen: list[int] = []
    head = fit_on_ray(SGDHead(max_epochs=4, random_state=0), fit, valid=valid, n_workers=2,
                      progress=seen.append)
    X_test, y_test = data.rows(2)
    one, two = single.score(X_test, y_test), head.score(X_test, y_test)
    assert one > 0.8 and abs(one - two) <= 0.03, (one, two)
    # The scaler combined from the workers' moments is the one-pass scaler.
    reference = fit_scaler(fit)
    np.testing.assert_allclose(head.scaler_.mean_, reference.mean_, rtol=1e-6)
    np.testing.assert_allclose(head.scaler_.scale_, reference.scale_, rtol=1e-5)
    # Both workers trained, on every fit row between them, every epoch; nothing else.
    assert head.n_workers_ == 2 and len(head.worker_rows_) == head.n_epochs_
    for rows in head.worker_rows_:
        assert min(rows) > 0.3 * fit.n_rows and sum(rows) == fit.n_rows
    assert sum(seen) == head.n_epochs_ * fit.n_rows and len(seen) == 2 * head.n_epochs_
    assert len(head.rows_per_s_) == head.n_epochs_ and min(head.rows_per_s_) > 0
    assert len(head.valid_scores_) == head.n_epochs_ and max(head.valid_scores_) > 0.8
    assert head.stopped_ in ("converged", "max_epochs")

    # The result is an ordinary SGDHead: it pickles and predicts the same afterwards.
    back = pickle.loads(pickle.dumps(head))
    assert type(back) is SGDHead and back.classes_.tolist() == CLASSES.tolist()
    np.testing.assert_array_equal(back.predict(X_test), head.predict(X_test))
    np.testing.assert_allclose(back.predict_proba(X_test[:5]), head.predict_proba(X_test[:5]))
    assert back.predict_proba(X_test[:5]).shape == (5, 3)


def test_only_the_labelled_keys_of_the_part_are_trained_on(cluster, data):
    # Two of the three classes' keys, fit part only: the cache's other rows (the third class,
    # the other parts, 600 unlabelled rows) are never read.
    chosen = (data.y != "c") & (data.part == 0)
    keys = [k for k, c in zip(data.keys, chosen, strict=True) if c]
    subset = CachedBlocks(data.path, FP, keys, data.y[chosen], block_rows=1024)
    head = fit_on_ray(SGDHead(max_epochs=2, validation_fraction=0), subset, n_workers=2)
    assert head.classes_.tolist() == ["a", "b"]
    assert [sum(rows) for rows in head.worker_rows_] == [int(chosen.sum())] * 2
    assert int(chosen.sum()) < 3600 / 2
    X_test, y_test = data.rows(2)
    ab = y_test != "c"
    assert set(head.predict(X_test).tolist()) <= {"a", "b"}
    assert head.score(X_test[ab], y_test[ab]) > 0.85
    assert head.valid_scores_ == [] and head.stopped_ == "max_epochs"


def test_the_rbf_kernel_map_is_fitted_once_and_shipped(cluster, data):
    head = fit_on_ray(SGDHead(kernel="rbf", n_components=64, max_epochs=2),
                      data.parts["fit"], valid=data.parts["valid"], n_workers=2)
    from featx.heads.kernel_map import RBFMap

    assert isinstance(head.kernel_, RBFMap) and head.kernel_.landmarks_.shape[0] == 64
    X_test, y_test = data.rows(2)
    assert head.score(X_test, y_test) > 0.75


def _worker_pids() -> list[int]:
    """This process's Ray workers running HeadWorker actors (the cluster's raylets are our
    children; their workers theirs)."""
    def ancestors(pid: int) -> set[int]:
        out = set()
        while pid > 1:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            pid = int(stat.rsplit(")", 1)[1].split()[1])
            out.add(pid)
        return out

    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::HeadWorker") and os.getpid() in ancestors(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_a_dying_worker_stops_the_run_with_a_cluster_error(cluster, data):
    killed: list[int] = []

    def kill_one(rows: int) -> None:
        if not killed:
            pids = _worker_pids()
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)  # as Ray's memory monitor would
            killed.append(pids[0])

    with pytest.raises(ClusterError, match=r"head worker \d of 2 died while "):
        fit_on_ray(SGDHead(max_epochs=3), data.parts["fit"], valid=data.parts["valid"],
                   n_workers=2, progress=kill_one)
    assert killed


def test_wrong_sources_and_too_many_workers_are_refused(cluster, data):
    with pytest.raises(FeatxError, match="source must be a CachedBlocks .* got ArrayBlocks"):
        fit_on_ray(SGDHead(), ArrayBlocks(data.X, data.y))
    with pytest.raises(ClusterError, match=r"n_workers=5 cannot run on the Ray cluster's 2 CPUs"):
        fit_on_ray(SGDHead(), data.parts["fit"], n_workers=5)


def test_moments_combine_exactly_and_one_model_averages_to_itself(data):
    fit = ArrayBlocks(data.X, data.y, block_rows=700)
    parts = [(len(X), X.mean(0, dtype=np.float64), X.var(0, dtype=np.float64))
             for X in np.array_split(data.X.astype(np.float64), [100, 1700])]
    combined, reference = combine_moments(parts), fit_scaler(fit)
    np.testing.assert_allclose(combined.mean_, reference.mean_, rtol=1e-9)
    np.testing.assert_allclose(combined.var_, reference.var_, rtol=1e-6)
    assert combined.n_samples_seen_ == len(data.X)
    head = SGDHead(max_epochs=1, validation_fraction=0).fit(data.X, data.y)
    same = average_models([head.clf_, head.clf_], [3, 5])
    np.testing.assert_allclose(same.coef_, head.clf_.coef_, rtol=1e-6)
    assert same.coef_ is same._average_coef  # aliased as partial_fit leaves it
