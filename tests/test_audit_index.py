"""EmbeddingIndex: exact and IVF search, built from arrays and from a cache, kept beside it."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from featx.audit.index import EmbeddingIndex, normalised
from featx.audit.sources import cached_sources
from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache
from featx.exceptions import CacheError, CacheGroupError, FeatxError


def _keys(n: int, start: int = 0) -> list[str]:
    """Content keys as the cache holds them (random-looking: the key index sorts by prefix)."""
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


@pytest.fixture
def rows(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(300, 16)).astype(np.float32)


def _exact(X: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    Zx, Zq = normalised(X), normalised(Q)
    sims = Zq @ Zx.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_flat_search_is_exact_cosine(rows):
    index = EmbeddingIndex.from_array(rows * 7.0)  # scale does not matter: cosine
    sims, ids = index.search(rows[:20], k=5)
    want_s, want_i = _exact(rows, rows[:20], 5)
    assert index.kind == "flat" and len(index) == 300 and index.width == 16
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    assert sims.dtype == np.float32


def test_exclude_self_drops_each_rows_own_entry_even_among_identical_rows(rows):
    X = rows.copy()
    X[7] = X[3]  # two identical rows: each must get the other, not itself
    index = EmbeddingIndex.from_array(X, ids=[f"r{i}" for i in range(len(X))])
    sims, ids = index.search(X, k=3, exclude_self=True)
    assert ids[3, 0] == "r7" and ids[7, 0] == "r3"
    assert all(f"r{i}" not in ids[i] for i in range(len(X)))
    s2, r2 = index.search_self(k=3)
    np.testing.assert_array_equal(index.ids[r2], ids)
    with pytest.raises(FeatxError, match="exclude_self=True takes the indexed rows"):
        index.search(X[:5], k=3, exclude_self=True)


def test_ivf_recall_against_exact(rng):
    centres = rng.normal(size=(20, 32))
    X = (centres[rng.integers(20, size=2000)] + 0.6 * rng.normal(size=(2000, 32)))
    index = EmbeddingIndex.from_array(X.astype(np.float32), exact_below=1000, nlist=16)
    assert index.kind == "ivf-pq4-sq8" and index.nprobe > 0
    _, got = index.search_rows(X[:200], k=10)
    _, want = _exact(X, X[:200], 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9
    # Its own rows, as it holds them (8-bit codes), find themselves first.
    sims, rows = index.search_self(k=3)
    np.testing.assert_allclose(index.vectors(0, 5), normalised(X[:5]), atol=0.02)
    assert (rows != np.arange(len(X))[:, None]).all() and sims.shape == (2000, 3)


def test_small_index_pads_with_minus_inf(rows):
    index = EmbeddingIndex.from_array(rows[:3])
    sims, r = index.search_rows(rows[:1], k=5)
    assert r[0, 3:].tolist() == [-1, -1] and np.isneginf(sims[0, 3:]).all()


def test_centred_index_subtracts_the_mean_from_queries(rows):
    X = rows + 10.0  # every row points the same way until centred
    index = EmbeddingIndex.from_array(X, center=True)
    _, got = index.search_rows(X[:10], k=3)
    _, want = _exact(X - X.mean(axis=0), X[:10] - X.mean(axis=0), 3)
    np.testing.assert_array_equal(got, want)


def test_bad_input_is_one_clear_error(rows):
    bad = rows.copy()
    bad[4, 2] = np.nan
    with pytest.raises(FeatxError, match="1 of 300 rows hold NaN"):
        EmbeddingIndex.from_array(bad)
    with pytest.raises(FeatxError, match="one id per row"):
        EmbeddingIndex.from_array(rows, ids=[1, 2])
    with pytest.raises(FeatxError, match="width 16"):
        EmbeddingIndex.from_array(rows).search(rows[:, :8])


def _cache(tmp_path, rows) -> EmbeddingCache:
    cache = EmbeddingCache(tmp_path / "emb.h5")
    cache.append("fp0abc", _keys(200), rows[:200], [f"img{i}.png" for i in range(200)])
    cache.append("fp0abc", _keys(100, 200), rows[200:], [f"img{i}.png" for i in range(200, 300)])
    return cache


def test_from_cache_is_kept_and_rebuilt_when_the_group_changes(tmp_path, rows):
    cache = _cache(tmp_path, rows)
    first = EmbeddingIndex.from_cache(cache.path, block_rows=64)
    assert len(first) == 300 and first.fingerprint == "fp0abc" and first.path is not None
    assert first.path.parent == tmp_path / "emb.h5.index" and first.path.is_file()
    by_key = dict(zip(_keys(300), rows, strict=True))
    sims, ids = first.search(rows[[5]], k=2)
    assert ids[0, 0] == _keys(1, 5)[0] and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    again = EmbeddingIndex.from_cache(cache, block_rows=64)
    assert again.path == first.path  # reused, not rebuilt
    np.testing.assert_array_equal(again.ids, first.ids)
    # A new row: another name, the old one removed.
    cache.append("fp0abc", _keys(1, 999), rows[:1] * -1, ["new.png"])
    third = EmbeddingIndex.from_cache(cache)
    assert len(third) == 301 and third.path != first.path
    assert sorted(p.name for p in third.path.parent.iterdir()) == sorted(
        third.path.with_suffix(s).name for s in (".faiss", ".json", ".npz"))
    assert np.allclose(normalised(by_key[third.ids[0]][None]), third.vectors(0, 1), atol=1e-6)


def test_from_cache_restricted_to_keys_and_damaged_index_rebuilt(tmp_path, rows):
    cache = _cache(tmp_path, rows)
    some = _keys(10, 250) + _keys(5)
    index = EmbeddingIndex.from_cache(cache, keys=some)
    assert sorted(index.ids.tolist()) == sorted(some)
    index.path.write_bytes(b"not faiss")
    rebuilt = EmbeddingIndex.from_cache(cache, keys=some)
    assert len(rebuilt) == 15
    with pytest.raises(CacheError, match="1 of the 16 keys asked for are not in cache group"):
        EmbeddingIndex.from_cache(cache, keys=[*some, "f" * 64], save=False)


def test_from_cache_without_a_group(tmp_path, rows):
    with pytest.raises(CacheGroupError, match="does not exist"):
        EmbeddingIndex.from_cache(tmp_path / "none.h5")
    cache = _cache(tmp_path, rows)
    cache.append("fp1def", _keys(2), rows[:2, :8], ["a", "b"])
    with pytest.raises(CacheGroupError, match="holds 2 groups"):
        EmbeddingIndex.from_cache(cache)
    assert EmbeddingIndex.from_cache(cache, group="fp1", save=False).width == 8
    failed_only = EmbeddingCache(tmp_path / "failed.h5")
    failed_only.append("fp2", [], np.zeros((0, 4), np.float32), [],
                       failed=[Failure(source="x.png", reason="bad", key="a" * 64)])
    with pytest.raises(CacheError, match="holds no rows to index"):
        EmbeddingIndex.from_cache(failed_only)


def test_cached_sources(tmp_path, rows):
    cache = _cache(tmp_path, rows)
    got = cached_sources(cache, "fp0abc", [*_keys(1, 250), "e" * 64, *_keys(1, 3)])
    assert got == ["img250.png", None, "img3.png"]
    assert not os.path.exists(tmp_path / "other.h5")
    assert cached_sources(tmp_path / "other.h5", "fp0abc", _keys(1)) == [None]
