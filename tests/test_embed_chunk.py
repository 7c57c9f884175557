"""The engine's chunk, step by step: keys, lookup, deduplicate, run (each batch committed with
its own failures), assemble; and the Failure record from the engine to the store and the
report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx import ImageEmbedder
from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache
from featx.embed.chunk import (
    Lookup,
    Plan,
    assemble,
    content_keys,
    deduplicate,
    failed_duplicates,
    lookup,
    to_compute,
)
from featx.embed.engine import Batch, cache_group, commit, run_network
from featx.embed.images import Item, as_items
from featx.exceptions import ImageLoadError
from featx.nets.backbones import resolve_backbone
from featx.nets.build import get_builder_network
from tests.conftest import tiny_convnet


def _items(rng: np.random.Generator, n: int) -> list[Item]:
    return list(as_items(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))[0])


def test_content_keys_say_which_items_cannot_be_read(tmp_path: Path, rng) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(good)
    items = list(as_items([str(good), str(tmp_path / "missing.png"), str(good)])[0])
    with ThreadPoolExecutor(2) as pool:
        keys, failed = content_keys(items, pool)
    assert keys[0] == keys[2] == items[0].key() and keys[1] is None
    assert [(e.index, e.reason) for e in failed] == [(1, "file not found")]


def test_lookup_finds_rows_and_remembered_failures(tmp_path: Path, rng) -> None:
    config = resolve_backbone(tiny_convnet, input_size=16, engine="keras")
    group = cache_group(config, None)
    items = _items(rng, 4)
    keys: list[str | None] = [item.key() for item in items]
    cache = EmbeddingCache(tmp_path / "c.h5")
    cache.append(group, [str(keys[0]), str(keys[2])], np.arange(10, dtype=np.float32).reshape(2, 5),
                 ["a", "c"], fields=config.fingerprint_fields,
                 failed=[Failure(key=keys[3], source="d", reason="truncated")])
    keys[1] = None  # unreadable: neither looked up nor remembered
    held = lookup(cache, [config], [group], items, keys)
    assert held.found_all.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(held.hits[0][1], np.arange(5, 10))
    assert [(e.index, e.reason, e.retry_param) for e in held.remembered] == [
        (3, "truncated", "retry_failed")]
    only_whether = lookup(cache, [config], [group], items, keys, keep_rows=False,
                          retry_failed=True)
    assert only_whether.found_all.tolist() == [True, False, True, False]
    assert only_whether.hits[0].size == 0 and only_whether.remembered == []


def test_to_compute_and_deduplicate() -> None:
    held = Lookup([np.array([True, False, False, False, False, False])],
                  [np.zeros((1, 2), np.float32)], [])
    failed = [ImageLoadError("b", "bad", 1)]
    todo = to_compute(held, failed)
    assert todo == [2, 3, 4, 5]
    keys = ["k0", None, "k2", "k3", "k2", None]
    plan = deduplicate(todo, keys)
    assert plan.unique == [2, 3, 5]  # 4 is 2's content; a position without a key stands alone
    assert [plan.source(i, keys[i]) for i in todo] == [2, 3, 2, 5]


def test_duplicates_of_a_failed_item_fail_too(rng) -> None:
    items = _items(rng, 4)
    keys = ["a", "b", "a", "b"]
    plan = deduplicate([0, 1, 2, 3], keys)
    extra = failed_duplicates(items, keys, plan, [ImageLoadError(items[1].name, "bad", 1)])
    assert [(e.index, e.reason) for e in extra] == [(3, "same content as a failed item")]


def test_assemble_puts_hits_and_network_rows_in_input_order() -> None:
    hits = np.array([[1.0, 1.0]], np.float32)
    held = Lookup([np.array([False, True, False, False])], [hits], [])
    keys = ["a", "b", "a", "c"]
    plan = deduplicate([0, 2, 3], keys)
    rows = [{0: np.array([0.0, 0.5], np.float32)}]  # "c" (position 3) failed: no row
    (out,) = assemble([2], held, plan, keys, rows)
    np.testing.assert_array_equal(out[:3], [[0.0, 0.5], [1.0, 1.0], [0.0, 0.5]])
    assert np.isnan(out[3]).all()


class _Writer:
    def __init__(self) -> None:
        self.puts: list[tuple[list[str], np.ndarray, list[str], list[Failure]]] = []

    def put(self, keys, vectors, sources, failed) -> None:  # as CacheWriter.put
        self.puts.append((keys, vectors, sources, failed))


def test_commit_hands_each_batch_its_own_failures_and_the_rows_a_group_lacks(rng) -> None:
    items = _items(rng, 4)
    keys = ["k0", "k1", "k2", "k3"]
    found = [np.array([False, True, False, False]), np.zeros(4, bool)]
    batch = Batch([0, 1], [np.ones((2, 3), np.float32), np.zeros((2, 4), np.float32)],
                  [ImageLoadError(items[2].name, "truncated", 2)])
    writers = [_Writer(), _Writer()]
    commit(writers, batch, items, keys, found)  # type: ignore[arg-type]
    first, second = writers[0].puts[0], writers[1].puts[0]
    assert first[0] == ["k0"] and first[1].shape == (1, 3)  # the first cut already holds k1
    assert second[0] == ["k0", "k1"] and second[1].shape == (2, 4)
    assert first[3] == second[3] == [Failure(key="k2", source=items[2].name,
                                             reason="truncated")]


def test_run_network_yields_a_batch_whose_items_all_failed(rng) -> None:
    """Failures travel with their batch: one of only bad items is yielded too (no rows), so no
    empty commit is needed at the end to remember them."""
    config = resolve_backbone(tiny_convnet, input_size=16, engine="keras")
    network = get_builder_network(config, (16, 16, 3))
    good = _items(rng, 3)
    bad = list(as_items([b"not an image", b"nor this"])[0])
    items = good + bad
    with ThreadPoolExecutor(2) as pool:
        batches = list(run_network(network, items, range(5), pool=pool, batch_size=3))
    assert [b.positions for b in batches] == [[0, 1, 2], []]
    assert [[e.index for e in b.failed] for b in batches] == [[], [3, 4]]
    assert batches[1].outputs[0].shape == (0, 5)


def test_the_last_batch_s_failures_are_remembered(tmp_path: Path, rng) -> None:
    """A run whose last batch holds only undecodable items remembers them in the cache, and the
    report has each failure as a record (its position, name, reason and content key)."""
    good = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    X = [*(Image.fromarray(g) for g in good), b"not an image", b"nor this"]
    cache = tmp_path / "c.h5"
    emb = ImageEmbedder(tiny_convnet, input_size=16, batch_size=3, cache=cache,
                        on_error="nan", engine="keras")
    emb.fit_transform(X)
    (group,) = EmbeddingCache(cache).groups()
    assert (group.rows, group.failures) == (3, 2)
    assert [(f.index, f.source) for f in emb.report_.failures] == [(3, "bytes[3]"),
                                                                    (4, "bytes[4]")]
    assert [f.key for f in emb.report_.failures] == [as_items(X)[0][3].key(),
                                                     as_items(X)[0][4].key()]


def test_a_failure_is_a_record_with_named_fields() -> None:
    f = Failure(source="a.png", reason="truncated", index=2)
    assert (f.index, f.source, f.reason, f.key) == (2, "a.png", "truncated", None)
    with pytest.raises(TypeError):
        Failure("a.png", "truncated")  # type: ignore[misc]  # keywords only
    assert Plan([1], [1], {}).source(1, None) == 1
