"""Heads at scale: a cache group read by blocks, rows labelled by content key, the heads that
train by blocks (SGDHead), and tune_heads' holdout protocol above exact_rows (library and CLI)."""

from __future__ import annotations

import csv
import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx import FeatxError, ImageEmbedder, load_model, tune_heads
from featx.cache.store import EmbeddingCache
from featx.exceptions import CacheError
from featx.heads.rows import ArrayBlocks, CachedBlocks
from featx.heads.scalable import BudgetExceeded, SGDHead
from featx.heads.tuning import image_keys
from tests.conftest import featx_main, save_tiny_convnet


def clusters(n: int, n_classes: int = 3, width: int = 12, seed: int = 0):
    """Overlapping Gaussian clusters (int labels), float32."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(scale=1.2, size=(n_classes, width))
    return (centres[y] + rng.normal(size=(n, width))).astype(np.float32), y


def keys_of(n: int, start: int = 0) -> list[str]:
    """Content keys as the cache stores them (sha256 hex), for rows start..start+n-1."""
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


ROW_OF = {k: i for i, k in enumerate(keys_of(10_000))}


def rows_of(keys: np.ndarray) -> list[int]:
    return [ROW_OF[k.decode()] for k in keys]


def filled_cache(path: Path, X: np.ndarray, batch: int = 97, fp: str = "fp") -> EmbeddingCache:
    """A cache whose group holds X's rows under keys 0..n-1, in many files."""
    cache = EmbeddingCache(path)
    keys = keys_of(len(X))
    for lo in range(0, len(X), batch):
        cache.append(fp, keys[lo:lo + batch], X[lo:lo + batch], ["s"] * len(X[lo:lo + batch]))
    return cache


# ---- the block reader ---------------------------------------------------------------------------


def test_blocks_give_every_row_once_whatever_the_files(tmp_path):
    X, _ = clusters(3000)
    cache = filled_cache(tmp_path / "e.h5", X)
    cache.append("fp", keys_of(40), X[:40] + 5, ["dup"] * 40)  # later copies never win
    cache.append("other", keys_of(10), np.ones((10, 3), np.float32), ["o"] * 10)
    assert cache.path.exists() and len(list(cache.segment_dir.glob("[!.]*.h5"))) >= 1
    for seed, block_rows in [(None, 1000), (3, 700), (4, 1)]:
        seen = []
        for block in cache.blocks("fp", block_rows=block_rows, seed=seed):
            assert 0 < len(block) <= block_rows and block.vectors.dtype == np.float32
            rows = rows_of(block.keys)
            np.testing.assert_array_equal(block.vectors, X[rows])
            seen += rows
        assert sorted(seen) == list(range(3000))
        if seed is None:
            assert seen == list(range(3000))  # stored order
    first = [r for b in cache.blocks("fp", block_rows=500, seed=1) for r in rows_of(b.keys)]
    again = [r for b in cache.blocks("fp", block_rows=500, seed=1) for r in rows_of(b.keys)]
    other = [r for b in cache.blocks("fp", block_rows=500, seed=2) for r in rows_of(b.keys)]
    assert first == again and first != other


def test_a_shuffled_block_mixes_rows_from_all_over_the_group(tmp_path):
    X, _ = clusters(4096, width=4)
    cache = filled_cache(tmp_path / "e.h5", X, batch=512)
    block = next(iter(cache.blocks("fp", block_rows=1024, seed=0)))
    rows = np.array(rows_of(block.keys))
    # Rows written one class folder after another sit in one region: a block is four pieces
    # of 256 rows (one HDF5 chunk each) drawn from anywhere, its rows shuffled.
    assert len(np.unique(rows // 256)) == 4 and rows.max() - rows.min() > 1024
    assert not (np.diff(rows) == 1).all()


def test_a_pass_is_a_snapshot_that_merges_do_not_disturb(tmp_path):
    X, _ = clusters(1000)
    cache = filled_cache(tmp_path / "e.h5", X, batch=100)
    blocks = cache.blocks("fp", block_rows=256, seed=0)
    got = [next(blocks)]
    cache.compact()  # replaces every file the pass opened
    got += list(blocks)
    assert sorted(r for b in got for r in rows_of(b.keys)) == list(range(1000))


def test_unknown_group_and_damaged_file_are_clear(tmp_path):
    X, _ = clusters(600)
    cache = filled_cache(tmp_path / "e.h5", X, batch=300)
    with pytest.raises(CacheError, match="has no group 'nope'"):
        list(cache.blocks("nope"))
    cache.blocks("fp")  # plans now, while the files are whole
    blocks = cache.blocks("fp", block_rows=100)
    segment = sorted(cache.segment_dir.glob("[!.]*.h5"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[:2048] + b"\0" * (len(data) - 2048))
    with pytest.raises(CacheError, match=r"could not be read.*Move it aside"):
        list(blocks)


# ---- labelled rows by content key ---------------------------------------------------------------


def test_cached_blocks_label_rows_by_key_and_keep_their_part(tmp_path):
    X, y = clusters(1200)
    cache = filled_cache(tmp_path / "e.h5", X)
    labelled = np.arange(0, 1200, 2)  # half the cache is labelled, in another order
    order = np.random.default_rng(0).permutation(labelled)
    part = (np.arange(len(order)) % 3).astype(np.int8)
    parts = CachedBlocks.split(cache, "fp", np.array(keys_of(1200), "S64")[order], y[order],
                               part, block_rows=128)
    assert set(parts) == {"fit", "valid", "test"}
    for code, name in enumerate(["fit", "valid", "test"]):
        src = parts[name]
        want = set(order[part == code].tolist())
        assert src.n_rows == len(want) and src.width == 12
        got_rows, got_y = [], []
        for Xb, yb in src.blocks(seed=5):
            rows = [int(np.flatnonzero((X == r).all(axis=1))[0]) for r in Xb[:3]]
            assert (y[rows] == yb[:3]).all()
            got_rows.append(len(yb))
            got_y.append(yb)
        assert sum(got_rows) == len(want)
        assert sorted(np.concatenate(got_y).tolist()) == sorted(y[list(want)].tolist())
    Xs, ys = parts["fit"].sample(50, seed=0)
    assert len(Xs) <= 50 and len(Xs) == len(ys) > 20


def test_array_blocks_hand_out_a_part_without_copying():
    X, y = clusters(100)
    rows = np.arange(10, 60)
    src = ArrayBlocks(X, y, rows=rows, block_rows=16)
    assert src.X is X and src.n_rows == 50
    seen = np.concatenate([yb for _, yb in src.blocks(seed=0)])
    assert sorted(seen.tolist()) == sorted(y[rows].tolist())


# ---- the SGD head -------------------------------------------------------------------------------


def test_sgd_head_is_a_scikit_learn_classifier_close_to_logistic_regression():
    X, y = clusters(3000, seed=1)
    X_test, y_test = X[2000:], y[2000:]
    X, y = X[:2000], y[:2000]
    exact = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    head = SGDHead(max_epochs=10, block_rows=256).fit(X, y)
    assert abs(head.score(X_test, y_test) - exact.score(X_test, y_test)) <= 0.02
    assert head.predict_proba(X_test[:5]).sum(axis=1) == pytest.approx(np.ones(5))
    assert head.stopped_ in ("converged", "max_epochs") and head.valid_scores_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(head)).predict(X_test),
                                  head.predict(X_test))
    assert clone(head).get_params() == head.get_params()
    hinge = SGDHead("hinge", kernel="rbf", n_components=64).fit(X, y)
    assert not hasattr(hinge, "predict_proba") and hinge.decision_function(X[:3]).shape == (3, 3)
    assert hinge.score(X_test, y_test) > 0.6


def test_sgd_head_streams_the_same_as_it_fits():
    X, y = clusters(800)
    a = SGDHead(validation_fraction=0, max_epochs=3, block_rows=100).fit(X, y)
    b = SGDHead(validation_fraction=0, max_epochs=3, block_rows=100).fit_stream(
        ArrayBlocks(X, y, block_rows=100))
    np.testing.assert_array_equal(a.clf_.coef_, b.clf_.coef_)


def test_sgd_head_deadline_stops_training_or_refuses_to_start():
    X, y = clusters(2000)
    with pytest.raises(BudgetExceeded, match="budget ran out"):
        SGDHead().fit_stream(ArrayBlocks(X, y), deadline=time.monotonic() - 1)
    head = SGDHead(validation_fraction=0, max_epochs=50, block_rows=10)
    t0 = time.monotonic()
    head.fit_stream(ArrayBlocks(X, y, block_rows=10), deadline=time.monotonic() + 0.5)
    assert head.stopped_ == "budget" and head.n_epochs_ < 50 and time.monotonic() - t0 < 5
    with pytest.raises(FeatxError, match="loss='squared' is not valid"):
        SGDHead("squared").fit(X, y)


# ---- tune_heads above exact_rows ----------------------------------------------------------------


def test_tune_heads_above_exact_rows_runs_the_holdout_protocol_on_arrays():
    X, y = clusters(3000, seed=2)
    board = tune_heads(X, y, heads=["logreg_sgd", "knn_faiss", "logreg"], test_size=0.2,
                       exact_rows=1000, progress=False)
    assert board.n_train == 2400 and board.n_test == 600 and board.cv == 0
    for r in board:
        assert r.protocol == "holdout" and np.isnan(r.cv_std) and r.metrics_on == "test"
        assert r.n_fit == 2400 - 240 and 0.5 < r.cv_mean <= 1 and 0.5 < r.test_score <= 1
    assert board["logreg"].why.startswith("does not stream")
    assert board["logreg_sgd"].why == "streams every training row by blocks"
    text = board.to_text()
    assert "logreg_sgd: holdout on 2160 rows (streams every training row by blocks)" in text
    assert "± " not in text.splitlines()[2]  # one validation block: no spread
    assert [r.cv_mean for r in board] == sorted((r.cv_mean for r in board), reverse=True)
    assert len(board.y_true) == 600
    small = tune_heads(X[:500], y[:500], heads=["logreg"], cv=3, exact_rows=1000)
    assert small.best.protocol == "3-fold cv" and small.best.n_fit == 500


def test_exact_heads_above_their_max_rows_train_on_a_sample(monkeypatch):
    from featx.heads import presets

    X, y = clusters(2400, seed=3)
    monkeypatch.setitem(presets.HEADS, "knn", presets.HEADS["knn"].__class__(
        **{**presets.HEADS["knn"].__dict__, "max_rows": 300}))
    board = tune_heads(X, y, heads=["knn"], exact_rows=1000, progress=False)
    assert board.best.n_fit == 300 and "a seeded sample of 300" in board.best.why


def test_default_heads_at_scale_are_the_scalable_ones_and_the_budget_is_honoured():
    X, y = clusters(6000, width=32, seed=4)
    t0 = time.monotonic()
    board = tune_heads(X, y, exact_rows=1000, budget=8, progress=False)
    spent = time.monotonic() - t0
    named = {r.head for r in board} | {n.split(":")[0] for n in board.notes}
    assert named == {"logreg_sgd", "linear_svm_sgd", "rbf_svm_approx", "knn_faiss"}
    assert spent < 8 + 15  # a block or a prediction pass may overrun its share, not more
    with pytest.raises(FeatxError, match="budget of 1e-06 s was too small for any head"):
        tune_heads(X, y, exact_rows=1000, budget=1e-6, progress=False)
    with pytest.raises(FeatxError, match="budget=-1 is not valid"):
        tune_heads(X, y, budget=-1)
    with pytest.raises(FeatxError, match="scoring='roc_auc' cannot rank heads above"):
        tune_heads(X, y, exact_rows=1000, scoring="roc_auc", heads=["logreg_sgd"])


def test_tune_heads_reads_the_cache_by_blocks_labels_by_key(tmp_path):
    X, y = clusters(2500, seed=5)
    images = []
    for i in range(len(X)):  # files whose content keys the cache rows are stored under
        p = tmp_path / "img" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"image {i}".encode())
        images.append(str(p))
    keys = image_keys(images)
    cache = EmbeddingCache(tmp_path / "e.h5")
    for lo in range(0, 2500, 500):
        cache.append("fp", [k.decode() for k in keys[lo:lo + 500]], X[lo:lo + 500],
                     images[lo:lo + 500])
    from_cache = tune_heads(tmp_path / "e.h5", y, images=images, heads=["logreg_sgd"],
                            test_size=0.2, exact_rows=1000, progress=False)
    from_array = tune_heads(X, y, heads=["logreg_sgd"], test_size=0.2, exact_rows=1000,
                            progress=False)
    # The same split and the same rows: the scores agree (the block order differs).
    assert from_cache.n_train == from_array.n_train == 2000 and from_cache.n_test == 500
    assert abs(from_cache.best.test_score - from_array.best.test_score) <= 0.03
    with pytest.raises(FeatxError, match=r"1 of 2,501 images are not in cache group fp"):
        extra = tmp_path / "img" / "new.bin"
        extra.write_bytes(b"never embedded")
        tune_heads(tmp_path / "e.h5", np.append(y, 0), images=[*images, str(extra)],
                   exact_rows=1000, progress=False)


# ---- featx heads above --exact-rows -------------------------------------------------------------


def test_cli_heads_above_exact_rows_streams_from_the_cache_and_saves_a_model(tmp_path):
    save_tiny_convnet(tmp_path / "tiny.keras", 16)
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(60):
            arr = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
            arr[..., c] += 150
            Image.fromarray(arr).save(tmp_path / "src" / f"c{c}" / f"{i}.png")
    (tmp_path / "src" / "c0" / "bad.png").write_bytes(b"not a png")
    args = ["heads", tmp_path / "src", "--backbone", tmp_path / "tiny.keras", "--cache",
            tmp_path / "e.h5", "--exact-rows", "50", "--heads", "logreg_sgd,knn_faiss",
            "--out", tmp_path / "out", "-q"]
    run = featx_main(*args)
    assert run.returncode == 0, run.stderr
    assert "holdout" in run.stdout and "logreg_sgd: holdout on" in run.stdout
    with open(tmp_path / "out" / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["protocol"] for r in rows} == {"holdout"} and len(rows) == 2
    model = load_model(tmp_path / "out" / "model.featx")
    pred = model.predict(sorted((tmp_path / "src" / "c1").glob("*.png"))[:10])
    assert (np.asarray(pred) == "c1").mean() >= 0.8
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
    # A budget too small for any head: one line, and nothing written in --out.
    again = featx_main(*args[:-3], "--out", tmp_path / "out2", "--budget", "0.000001")
    assert again.returncode != 0 and "too small for any head" in again.stderr
    assert not (tmp_path / "out2").exists()
    # The embeddings came from the cache: a second embedder run finds every row there.
    emb = ImageEmbedder(str(tmp_path / "tiny.keras"), cache=str(tmp_path / "e.h5"),
                        on_error="skip")
    assert emb.embed_to_cache(sorted(map(str, (tmp_path / "src").rglob("*.png")))).n_embedded == 0


def test_predictions_go_in_batches_not_one_call_per_block():
    """A part of a cache group comes as a few rows per block read; the holdout protocol joins
    them before predicting (the kNN head on disk reads its whole index once per call)."""
    from featx.heads.at_scale import _batches

    X, y = clusters(1000, seed=9)
    source = ArrayBlocks(X, y, rows=np.arange(0, 1000, 2), block_rows=30)  # 500 rows, 17 blocks
    batches = list(_batches(source, 200))
    assert [len(b[1]) for b in batches] == [210, 210, 80]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X[::2])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[::2])
    assert list(_batches(ArrayBlocks(X, y, rows=np.arange(0)), 200)) == []
