"""Caches written before the fingerprint codec: read, rebuilt and hit by today's featx.

``tests/data/legacy/`` was written by featx at 7eaec2b (``scripts/dev/make_legacy_cache.py``):
a tiny model file, its cache and the fingerprint it was filed under; ``fields.json`` holds the
stored fields of a few other configurations as that featx wrote them. Stored bytes must not
change: a cache made by an earlier featx stays valid.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from featx import ImageEmbedder
from featx.cache.groups import embedder_params_from_cache
from featx.cache.store import EmbeddingCache
from featx.nets.backbones import resolve_backbone
from featx.nets.fingerprint import Fingerprint
from featx.nets.identity import weights_identity

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy"
RECORD = json.loads((LEGACY / "fingerprint.json").read_text())
FIELDS = json.loads((LEGACY / "fields.json").read_text())


def legacy_images() -> np.ndarray:
    return np.random.default_rng(29).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def legacy_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the legacy cache; the working directory is the repository's root, where the
    group's label finds its model file (``tests/data/legacy/tiny.keras``)."""
    monkeypatch.chdir(ROOT)
    return Path(shutil.copy(LEGACY / "emb.h5", tmp_path / "emb.h5"))


def test_the_legacy_group_is_the_one_today_s_featx_files_it_under(legacy_cache):
    (group,) = EmbeddingCache(legacy_cache).groups()
    assert group.fingerprint == RECORD["fingerprint"]
    assert dict(group.fields) == RECORD["fields"]
    config = resolve_backbone("tests/data/legacy/tiny.keras", input_size=16)
    assert config.fingerprint == RECORD["fingerprint"]
    assert config.fingerprint_fields == RECORD["fields"]


def test_the_legacy_cache_is_hit(legacy_cache):
    embedder = ImageEmbedder("tests/data/legacy/tiny.keras", input_size=16, engine="keras",
                             cache=legacy_cache)
    rows = embedder.fit_transform(legacy_images())
    assert embedder.report_.n_hits == 12 and embedder.report_.n_embedded == 0
    np.testing.assert_array_equal(rows, np.asarray(RECORD["rows"], np.float32))


def test_the_legacy_group_rebuilds_its_embedder_and_is_hit(legacy_cache):
    params = embedder_params_from_cache(legacy_cache)
    assert params["backbone"] == "tests/data/legacy/tiny.keras"
    embedder = ImageEmbedder(**params, engine="keras", cache=legacy_cache)
    embedder.fit_transform(legacy_images())
    assert embedder.report_.n_hits == 12 and embedder.report_.n_embedded == 0


def _today(value):
    """A recorded field with the installed versions' identities put in."""
    if not isinstance(value, str):
        return value
    now = {"{imagenet}": weights_identity("imagenet"), "{random}": weights_identity(None),
           "{keras_hub}": importlib.metadata.version("keras-hub")}
    for placeholder, identity in now.items():
        value = value.replace(placeholder, identity)
    return value


@pytest.mark.parametrize("case", FIELDS["cases"], ids=lambda c: f"{c['backbone']}-{c['params']}")
def test_stored_fields_are_the_ones_featx_wrote_before(case):
    params = dict(case["params"])
    if isinstance(params.get("input_size"), list):
        params["input_size"] = tuple(params["input_size"])
    if params.get("precision") == "int8":  # calibrated on this CPU only: made as it was then
        config = replace(resolve_backbone(case["backbone"], precision="mixed_bfloat16",
                                          engine="openvino"),
                         precision="int8", calibration_id=case["calibration_id"])
    else:
        config = resolve_backbone(case["backbone"], **params)
    expected = {k: _today(v) for k, v in case["fields"].items()}
    assert config.fingerprint_fields == expected
    text = json.dumps(expected, sort_keys=True)
    assert config.fingerprint == hashlib.sha256(text.encode()).hexdigest()[:24]


@pytest.mark.parametrize("case", FIELDS["cases"], ids=lambda c: f"{c['backbone']}-{c['params']}")
def test_stored_fields_decode_and_encode_back_unchanged(case):
    fields = {k: _today(v) for k, v in case["fields"].items()}
    assert Fingerprint.from_fields(fields).fields() == fields
    assert Fingerprint.from_fields(RECORD["fields"]).fields() == RECORD["fields"]
