"""Choosing a cache group and rebuilding the embedder's parameters from its stored fields."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featx import ImageEmbedder
from featx.cache.groups import (
    choose_group,
    embedder_params_from_cache,
    embedder_params_from_group,
)
from featx.cache.store import EmbeddingCache, GroupInfo
from featx.exceptions import CacheGroupError, FeatxError
from featx.nets.backbones import resolve_backbone
from tests.conftest import tiny_convnet


def group_of(backbone, **params) -> GroupInfo:
    config = resolve_backbone(backbone, **params)
    return GroupInfo(config.fingerprint, config.fingerprint_fields, config.label, 8, 3)


@pytest.mark.parametrize(
    "backbone, params",
    [
        ("mobilenet", {}),
        ("mobilenet", {"input_size": 160, "pooling": "max", "layer": "conv_pw_11_relu"}),
        ("resnet50", {"weights": None, "input_size": (160, 224), "resize": "center_crop"}),
        ("efficientnet_b0", {"preprocess": "tf", "layer": 12}),
        ("mobilenet", {"precision": "mixed_bfloat16", "pooling": "none"}),
    ],
)
def test_registry_groups_come_back_as_the_same_fingerprint(backbone, params):
    group = group_of(backbone, **params)
    rebuilt = embedder_params_from_group(group)
    assert rebuilt["backbone"] == backbone
    assert resolve_backbone(**rebuilt).fingerprint == group.fingerprint
    # ... and as embedder parameters (what featx heads builds).
    assert ImageEmbedder(**rebuilt).backbone_config().fingerprint == group.fingerprint


def _embed(backbone: Path | str, cache: Path, images: np.ndarray, **params) -> str:
    embedder = ImageEmbedder(backbone, input_size=16, cache=cache, **params)
    embedder.fit_transform(images)
    return str(embedder.config_.fingerprint)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    # A comma in the path: the label is split on ", ", each prefix is tried.
    path = tmp_path / "my, model.keras"
    tiny_convnet((16, 16, 3)).save(path)
    return path


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 255, size=(4, 16, 16, 3), dtype=np.uint8)


def test_a_model_file_group_is_found_by_its_digest(tmp_path, model_file, images):
    cache = tmp_path / "emb.h5"
    fingerprint = _embed(model_file, cache, images)
    params = embedder_params_from_cache(cache)
    assert params["backbone"] == str(model_file)
    assert params["input_size"] == 16
    again = ImageEmbedder(**params, cache=cache)
    again.fit_transform(images)
    assert again.config_.fingerprint == fingerprint and again.report_.n_hits == len(images)


def test_a_model_file_that_changed_or_moved_is_an_error(tmp_path, model_file, images):
    cache = tmp_path / "emb.h5"
    _embed(model_file, cache, images)
    moved = tmp_path / "moved.keras"
    shutil.move(model_file, moved)
    with pytest.raises(FeatxError, match="is not there now. Pass the model file"):
        embedder_params_from_cache(cache)
    moved.rename(model_file)
    with open(model_file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(FeatxError, match="has changed since"):
        embedder_params_from_cache(cache)


def test_several_groups_are_listed_and_a_prefix_picks_one(tmp_path, model_file, images):
    cache = tmp_path / "emb.h5"
    avg = _embed(model_file, cache, images)
    peak = _embed(model_file, cache, images[:2], pooling="max")
    with pytest.raises(CacheGroupError, match="holds 2 groups") as caught:
        choose_group(cache)
    assert [g.fingerprint for g in caught.value.groups] == [avg, peak]  # most rows first
    assert f"{avg} (file {model_file}" in str(caught.value) and "4 rows" in str(caught.value)
    assert "pool=max" in str(caught.value)
    assert choose_group(cache, peak[:6]).fingerprint == peak
    assert embedder_params_from_cache(cache, group=peak[:6])["pooling"] == "max"
    with pytest.raises(CacheGroupError, match="matches no group") as caught:
        choose_group(cache, "zz")
    assert caught.value.prefix == "zz" and len(caught.value.groups) == 2
    with pytest.raises(CacheGroupError, match="matches 2 groups"):
        choose_group(cache, "")


def test_a_missing_or_empty_cache_says_so(tmp_path):
    with pytest.raises(CacheGroupError, match="does not exist, so it cannot say which backbone"):
        choose_group(tmp_path / "none.h5")
    import h5py

    h5py.File(tmp_path / "empty.h5", "w").close()
    with pytest.raises(CacheGroupError, match="holds no embeddings") as caught:
        choose_group(tmp_path / "empty.h5")
    assert caught.value.groups == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weights": "sha256:" + "0" * 64}, "weights file .* pass the same weights file"),
        ({"backbone": "builder:tests.conftest.tiny_convnet"}, "a backbone function in memory"),
        ({"backbone": "model:sha256:" + "1" * 64}, "a keras.Model in memory"),
        ({"backbone": "alexnet"}, "backbone 'alexnet', which this featx does not know"),
        ({"preprocess": "callable:mine.prep"}, "preprocessed by 'callable:mine.prep'"),
        ({"weights": "imagenet@keras-0.1"}, r"weights: 'imagenet@keras-0.1' in the cache, "
                                            r"'imagenet@keras-3[^']*' here"),
        ({"format": 0}, "format: 0 in the cache, 2 here.*another version"),
    ],
)
def test_fields_that_cannot_be_rebuilt_say_what_to_pass(change, message):
    group = group_of("mobilenet")
    fields = {**group.fields, **change}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    with pytest.raises(FeatxError, match=message):
        embedder_params_from_group(GroupInfo(digest, fields, group.label, 8, 3))


def test_a_group_whose_name_is_not_its_fields_is_refused():
    group = group_of("mobilenet")
    renamed = GroupInfo("0" * 24, group.fields, group.label, 8, 3)
    with pytest.raises(FeatxError, match="its name is not its fields' digest"):
        embedder_params_from_group(renamed)


def test_a_group_without_fields_is_an_error():
    with pytest.raises(FeatxError, match="stores no fingerprint fields"):
        embedder_params_from_group(GroupInfo("ab", {}, "", 8, 3))


def test_a_group_made_by_the_pillow_decoder_is_read_back_with_it(tmp_path) -> None:
    # Embedding format 1 is Pillow's decoding: featx heads on such a cache must embed new
    # images the same way, not refuse the group or mix in the fast decoder's rows.
    config = resolve_backbone("mobilenet", decoder="pillow", engine="keras")
    assert config.fingerprint_fields["format"] == 1
    path = tmp_path / "emb.h5"
    EmbeddingCache(path).append(config.fingerprint, ["a" * 64], np.zeros((1, 1024), np.float32),
                                ["x.png"], fields=config.fingerprint_fields, label=config.label)
    params = embedder_params_from_cache(path)
    assert params["decoder"] == "pillow"
    assert ImageEmbedder(**params).backbone_config().fingerprint == config.fingerprint


def test_a_keras_hub_group_names_its_preset_or_asks_for_the_directory(tmp_path) -> None:
    # featx heads without --backbone on a cache of Keras Hub embeddings: a preset name is rebuilt
    # from the fingerprint (nothing is downloaded to resolve it); a directory's path is not kept.
    config = resolve_backbone("keras_hub:dinov2_small", engine="keras")
    params = embedder_params_from_group(group_of("keras_hub:dinov2_small", engine="keras"))
    assert params["backbone"] == "keras_hub:dinov2_small"
    assert ImageEmbedder(**params).backbone_config().fingerprint == config.fingerprint
    fields = dict(config.fingerprint_fields, backbone="hub:sha256:" + "2" * 64)
    with pytest.raises(FeatxError, match=r"Keras Hub preset directory .*--backbone keras_hub:"):
        embedder_params_from_group(GroupInfo("1" * 24, fields, "dinov2", 8, 3))
