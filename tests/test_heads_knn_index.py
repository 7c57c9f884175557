"""featx.heads.knn_index: the kNN head on a faiss index, against scikit-learn's and its own
exact search, streamed, saved and stopped by a deadline."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from featx.exceptions import FeatxError
from featx.heads.disk_ivf import DiskIVF
from featx.heads.knn_index import IndexKNNClassifier, auto_nlist, disk_nprobe
from featx.heads.rows import ArrayBlocks
from featx.heads.scalable import BudgetExceeded
from featx.model.saved import TRUSTED_TYPES


def small_set(seed: int = 0, n: int = 400, d: int = 12) -> tuple[np.ndarray, ...]:
    """Continuous rows on unequal scales (so standardising matters), three classes."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 10.0, d)
    X = (rng.normal(size=(n + 200, d)) * scales + 5).astype(np.float32)
    y = (X[:, 0] / scales[0] + X[:, 1] / scales[1] > 10).astype(int) + (X[:, 2] > 5)
    return X[:n], y[:n], X[n:], y[n:]


def clusters(n: int, seed: int, d: int = 64, k: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters of unequal spread in ``d`` dims; the label is the cluster mod 8."""
    centres = np.random.default_rng(100).normal(size=(k, d)) * 2.0
    spread = np.random.default_rng(101).uniform(0.6, 1.6, k)
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, n)
    return (centres[c] + rng.normal(size=(n, d)) * spread[c, None]).astype(np.float32), c % 8


@pytest.fixture(scope="module")
def ivf_pair() -> tuple[IndexKNNClassifier, IndexKNNClassifier, np.ndarray, np.ndarray]:
    X, y = clusters(20_000, seed=0)
    Xq, yq = clusters(1_000, seed=1)
    exact = IndexKNNClassifier(10).fit(X, y)
    ivf = IndexKNNClassifier(10, exact_below=1_000).fit(X, y)
    return exact, ivf, Xq, yq


@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [4, 7])
def test_exact_mode_is_the_knn_preset(weights, k):
    # Continuous rows: no two distances tie, so float32 search finds sklearn's neighbours and
    # every prediction is the same, a tied vote (k=4, uniform) broken the same way (the first
    # class in classes_).
    X, y, Xq, _ = small_set()
    ours = IndexKNNClassifier(k, weights=weights).fit(X, y)
    ref = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, weights=weights))
    ref.fit(X, y)
    assert ours.index_kind_ == "flat" and ours.nprobe_ == 0
    np.testing.assert_array_equal(ours.predict(Xq), ref.predict(Xq))
    np.testing.assert_allclose(ours.predict_proba(Xq), ref.predict_proba(Xq), atol=1e-6)
    dist, ind = ours.kneighbors(Xq)
    ref_dist, ref_ind = ref[-1].kneighbors(ref[0].transform(Xq))
    np.testing.assert_array_equal(ind, ref_ind)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5)
    if k == 4 and weights == "uniform":
        assert (ours.predict_proba(Xq).max(axis=1) == 0.5).any()  # ties were exercised


def test_ivf_mode_recall_and_accuracy_against_exact(ivf_pair):
    exact, ivf, Xq, yq = ivf_pair
    assert (ivf.index_kind_, ivf.nlist_, ivf.nprobe_) == ("ivf-disk", auto_nlist(20_000),
                                                          disk_nprobe(auto_nlist(20_000)))
    _, truth = exact.kneighbors(Xq)
    _, found = ivf.kneighbors(Xq)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95
    assert abs(ivf.score(Xq, yq) - exact.score(Xq, yq)) <= 0.01


@pytest.mark.parametrize("exact_below", [100_000, 500])
def test_streaming_in_small_blocks_changes_nothing(exact_below):
    X, y = clusters(3_000, seed=2, d=16)
    Xq, _ = clusters(300, seed=3, d=16)
    seen: list[int] = []
    whole = IndexKNNClassifier(5, exact_below=exact_below, block_rows=10**6).fit(X, y)
    streamed = IndexKNNClassifier(5, exact_below=exact_below).fit_stream(
        ArrayBlocks(X, y, block_rows=128), progress=seen.append)
    assert seen == [128] * 23 + [3_000 - 23 * 128]  # each block added to the index
    assert streamed.index_.ntotal == whole.index_.ntotal == len(X)
    assert isinstance(streamed.index_, DiskIVF) == (exact_below < len(X))
    np.testing.assert_array_equal(streamed.labels_, whole.labels_)
    d1, i1 = whole.kneighbors(Xq)
    d2, i2 = streamed.kneighbors(Xq)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5)
    np.testing.assert_array_equal(whole.predict(Xq), streamed.predict(Xq))


@pytest.mark.parametrize("exact_below", [100_000, 500])
def test_pickle_and_skops_round_trips_predict_identically(exact_below):
    X, y = clusters(3_000, seed=4, d=16)
    Xq, _ = clusters(300, seed=5, d=16)
    head = IndexKNNClassifier(5, weights="distance", exact_below=exact_below).fit(X, y)
    data = sio.dumps(head)
    assert set(sio.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
    for loaded in (pickle.loads(pickle.dumps(head)), sio.loads(data, trusted=TRUSTED_TYPES)):
        assert (loaded.index_kind_, loaded.nprobe_) == (head.index_kind_, head.nprobe_)
        np.testing.assert_array_equal(loaded.kneighbors(Xq)[1], head.kneighbors(Xq)[1])
        np.testing.assert_array_equal(loaded.predict_proba(Xq), head.predict_proba(Xq))
    assert isinstance(head.index_, type(pickle.loads(pickle.dumps(head)).index_))  # not bytes


def test_clone_gives_the_parameters_unfitted():
    head = IndexKNNClassifier(3, weights="distance", nlist=64, nprobe=4, random_state=7)
    head.fit(*clusters(500, seed=6, d=8))
    copy = clone(head)
    assert copy.get_params() == head.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)


def test_a_deadline_already_past_raises_and_keeps_nothing():
    X, y = clusters(1_000, seed=7, d=8)
    head = IndexKNNClassifier(5)
    assert issubclass(BudgetExceeded, FeatxError)  # what a search catches to skip a candidate
    with pytest.raises(BudgetExceeded, match=r"cannot be half-built.*give it a later deadline"):
        head.fit_stream(ArrayBlocks(X, y), deadline=time.monotonic() - 1)
    with pytest.raises(NotFittedError):
        check_is_fitted(head)


def test_a_deadline_passed_between_blocks_keeps_the_earlier_fit():
    X, y = clusters(1_000, seed=8, d=8)
    head = IndexKNNClassifier(5, scale=False).fit(X[:100], y[:100])
    with pytest.raises(BudgetExceeded, match=r"deadline \(adding rows to the index; 100 of 1,000"):
        head.fit_stream(ArrayBlocks(X, y, block_rows=100), deadline=time.monotonic() + 0.05,
                        progress=lambda rows: time.sleep(0.06))
    assert head.index_.ntotal == 100


@pytest.mark.parametrize("exact_below", [100_000, 500])
def test_predict_proba_sums_to_one_with_columns_in_classes_order(exact_below):
    X, codes = clusters(2_000, seed=9, d=8)
    names = np.array(["owl", "cat", "emu", "yak", "ant", "bee", "dog", "eel"])
    Xq, _ = clusters(200, seed=10, d=8)
    head = IndexKNNClassifier(6, exact_below=exact_below).fit(X, names[codes])
    proba = head.predict_proba(Xq)
    assert head.classes_.tolist() == sorted(names)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    _, ind = head.kneighbors(Xq)
    share = (names[codes][ind][:, :, None] == head.classes_).mean(axis=1)
    np.testing.assert_allclose(proba, share)
    np.testing.assert_array_equal(head.predict(Xq), head.classes_[proba.argmax(axis=1)])


@parametrize_with_checks([IndexKNNClassifier(n_neighbors=3)])
def test_sklearn_compatible(estimator, check):
    # Every check passes with the default tags (a classifier of dense, finite rows).
    check(estimator)


def test_more_neighbours_than_rows_says_how_many_there_are():
    head = IndexKNNClassifier(5).fit(*clusters(4, seed=11, d=3))
    with pytest.raises(ValueError, match=r"n_neighbors <= 4 .*got n_neighbors=5"):
        head.predict(np.zeros((1, 3)))


def test_wide_rows_are_projected_before_an_ivf_index():
    """Above n_pca features, the IVF index holds the rows' top principal axes: on rows whose
    structure lies in fewer dimensions, neighbours and accuracy stay those of exact search."""
    import pickle

    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(7)
    n, k = 6000, 10
    y = rng.integers(0, 4, n)
    basis = rng.normal(size=(16, 120))
    X = ((rng.normal(size=(4, 16))[y] * 3 + rng.normal(size=(n, 16))) @ basis
         + 0.05 * rng.normal(size=(n, 120))).astype(np.float32)
    X_test, y_test, X, y = X[:500], y[:500], X[500:], y[500:]
    head = IndexKNNClassifier(k, exact_below=1000, n_pca=32).fit(X, y)
    assert head.index_kind_ == "pca32-ivf-disk"
    exact = make_pipeline(StandardScaler(), KNeighborsClassifier(k)).fit(X, y)
    assert abs(head.score(X_test, y_test) - exact.score(X_test, y_test)) <= 0.01
    _, approx = head.kneighbors(X_test)
    _, truth = exact[-1].kneighbors(exact[0].transform(X_test), k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(approx, truth, strict=True)])
    assert recall >= 0.9
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(head)).predict(X_test),
                                  head.predict(X_test))


def test_searching_every_cell_of_the_disk_index_is_exact_search(tmp_path):
    """With nprobe = nlist the inverted file compares every row: the neighbours of exact search
    (float16 rows: distances to 1e-3), whatever cell each row was written to."""
    X, y = clusters(4_000, seed=12, d=24)
    Xq, _ = clusters(300, seed=13, d=24)
    exact = IndexKNNClassifier(7).fit(X, y)
    disk = IndexKNNClassifier(7, exact_below=1_000, nlist=32, index_dir=tmp_path).fit(X, y)
    disk.nprobe_ = disk.nlist_
    (d1, i1), (d2, i2) = exact.kneighbors(Xq), disk.kneighbors(Xq)
    assert np.mean(i1 == i2) >= 0.99  # float16 may swap two rows at near-equal distances
    np.testing.assert_allclose(d2, d1, rtol=3e-3)
    np.testing.assert_array_equal(np.sort(disk.index_.ids), np.arange(len(X)))


def test_the_disk_index_is_a_file_in_index_dir_removed_with_the_head(tmp_path):
    import gc

    X, y = clusters(3_000, seed=14, d=32)
    head = IndexKNNClassifier(5, exact_below=1_000, index_dir=tmp_path).fit(X, y)
    [folder] = list(tmp_path.iterdir())
    [file] = list(folder.iterdir())
    # The rows are on disk as float16; in memory only the centroids and 8 bytes a row.
    assert file.stat().st_size >= len(X) * 32 * 2
    assert head.index_.ids.nbytes == 8 * len(X) and not hasattr(head.index_, "rows")
    refit = IndexKNNClassifier(5, exact_below=1_000, index_dir=tmp_path).fit(X, y)
    assert len(list(tmp_path.iterdir())) == 2
    del head, refit
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_a_deadline_while_writing_the_disk_index_leaves_no_file(tmp_path):
    X, y = clusters(2_000, seed=15, d=8)
    head = IndexKNNClassifier(5, exact_below=500, index_dir=tmp_path)
    deadline = time.monotonic() + 2.0  # the cells are found well before; the first block
    # written then waits for the deadline to pass, and the second is refused.
    with pytest.raises(BudgetExceeded, match=r"writing the rows cell by cell; 500 of 2,000"):
        head.fit_stream(ArrayBlocks(X, y, block_rows=500), deadline=deadline,
                        progress=lambda rows: time.sleep(max(0.0, deadline - time.monotonic())))
    with pytest.raises(NotFittedError):
        check_is_fitted(head)
    assert list(tmp_path.iterdir()) == []


def test_the_disk_index_written_and_read_back_and_a_cut_file_refused(tmp_path):
    X, y = clusters(2_000, seed=16, d=16)
    Xq, _ = clusters(100, seed=17, d=16)
    head = IndexKNNClassifier(5, exact_below=500).fit(X, y)
    head.write_index(tmp_path / "knn.index")
    other = clone(head).fit(X[:10], y[:10])  # fitted, then given the first head's index
    other.scaler_, other.labels_, other.nprobe_ = head.scaler_, head.labels_, head.nprobe_
    other.read_index(tmp_path / "knn.index")
    (tmp_path / "knn.index").unlink()  # the head keeps its own copy
    np.testing.assert_array_equal(other.kneighbors(Xq)[1], head.kneighbors(Xq)[1])
    head.write_index(tmp_path / "cut.index")
    with open(tmp_path / "cut.index", "r+b") as f:
        f.truncate(10_000)
    with pytest.raises(FeatxError, match=r"cut short .*fit the head again"):
        other.read_index(tmp_path / "cut.index")


def test_a_faiss_ivf_index_saved_before_the_disk_index_still_searches(tmp_path):
    """Heads saved by the earlier featx hold an IVF index in faiss's format; read_index takes it
    and kneighbors searches it with the saved nprobe_."""
    import faiss

    X, y = clusters(3_000, seed=18, d=16)
    head = IndexKNNClassifier(5).fit(X, y)  # flat; then given a faiss IVF as an old file had
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 16)
    scaled = head.scaler_.transform(X).astype(np.float32)
    ivf.train(scaled)
    ivf.add(scaled)
    faiss.write_index(ivf, str(tmp_path / "old.faiss"))
    exact = head.kneighbors(X[:50])[1]
    head.read_index(tmp_path / "old.faiss")
    head.nprobe_ = 16
    np.testing.assert_array_equal(head.kneighbors(X[:50])[1], exact)
