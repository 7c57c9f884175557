"""ImageEmbedder: inputs, output contract, cache behaviour, error policies, sklearn integration."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from featx import (
    EmbeddingCache,
    ImageEmbedder,
    ImageLoadError,
    UnknownBackboneError,
    load_image_folder,
)
from featx.nets.backbones import resolve_backbone
from tests.conftest import tiny_convnet, tiny_dense


def make_embedder(**kwargs) -> ImageEmbedder:
    kwargs.setdefault("input_size", 16)
    return ImageEmbedder(tiny_convnet, **kwargs)


def network_of(embedder: ImageEmbedder, channels: int = 3):
    from featx.nets.build import get_builder_network

    cfg = embedder.backbone_config()
    return get_builder_network(cfg, (*cfg.input_size, channels))


@pytest.fixture
def pixels(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(6, 20, 24, 3), dtype=np.uint8)


def test_import_featx_does_not_import_tensorflow_or_keras():
    code = "import sys, featx; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_transform_returns_float32_rows_in_input_order(pixels):
    emb = make_embedder()
    out = emb.fit_transform(pixels)
    assert out.dtype == np.float32 and out.shape == (6, 5)
    reversed_out = emb.transform(pixels[::-1])
    np.testing.assert_array_equal(reversed_out, out[::-1])
    # Batching does not change the result or the order.
    np.testing.assert_allclose(make_embedder(batch_size=4).transform(pixels), out, atol=1e-6)


def test_every_input_form_gives_the_same_embedding(pixels, tmp_path):
    emb = make_embedder()
    expected = emb.fit_transform(pixels)
    paths = []
    for i, arr in enumerate(pixels):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    encoded = [p.read_bytes() for p in paths]
    forms = {
        "str paths": [str(p) for p in paths],
        "Path objects": paths,
        "Series": pd.Series([str(p) for p in paths]),
        "DataFrame": pd.DataFrame({"path": [str(p) for p in paths]}),
        "bytes": encoded,
        "PIL": [Image.open(io.BytesIO(b)) for b in encoded],
    }
    for name, X in forms.items():
        np.testing.assert_allclose(emb.transform(X), expected, atol=1e-5, err_msg=name)
    # Float images are resized in float (uint8 ones round to integers): close, not equal.
    np.testing.assert_allclose(emb.transform(pixels.astype(np.float32)), expected, atol=2e-3)
    same_size = pixels[:, :16, :16]
    np.testing.assert_allclose(
        emb.transform(same_size.astype(np.float64)), emb.transform(same_size), atol=1e-6
    )


def test_grey_images_become_rgb(rng):
    grey = rng.integers(0, 256, size=(3, 16, 16), dtype=np.uint8)
    emb = make_embedder()
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_allclose(emb.transform(grey), emb.transform(rgb), atol=1e-6)
    np.testing.assert_allclose(emb.transform(grey[..., None]), emb.transform(rgb), atol=1e-6)


def test_resize_policies_differ_on_non_square_images(rng):
    wide = rng.integers(0, 256, size=(2, 16, 48, 3), dtype=np.uint8)
    a = make_embedder(resize="resize").transform(wide)
    b = make_embedder(resize="center_crop").transform(wide)
    assert not np.allclose(a, b)
    # A centre crop of the wide image equals the embedding of its centre square.
    np.testing.assert_allclose(b, make_embedder().transform(wide[:, :, 16:32]), atol=1e-5)


def test_cache_second_transform_is_all_hits_and_identical(pixels, tmp_path):
    cache = tmp_path / "emb.h5"
    emb = make_embedder(cache=cache)
    first = emb.fit_transform(pixels)
    assert (emb.report_.n_hits, emb.report_.n_misses, emb.report_.n_embedded) == (0, 6, 6)
    net = network_of(emb)
    seen = net.n_seen
    second = clone(emb).fit(pixels).transform(pixels)
    np.testing.assert_array_equal(first, second)
    assert net.n_seen == seen  # nothing went through the network
    assert cache.is_file()


def test_cache_only_embeds_the_misses(pixels, tmp_path, rng):
    emb = make_embedder(cache=tmp_path / "emb.h5")
    emb.fit_transform(pixels[:4])
    more = rng.integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
    out = emb.transform(np.concatenate([more, pixels]))
    assert (emb.report_.n_hits, emb.report_.n_embedded) == (4, 4)
    np.testing.assert_allclose(out[2:], make_embedder().transform(pixels), atol=1e-6)


def test_embed_to_cache_fills_the_cache_and_returns_no_rows(pixels, tmp_path, monkeypatch):
    from featx.cache.store import EmbeddingCache

    emb = make_embedder(cache=tmp_path / "emb.h5")
    emb.fit(pixels)
    report = emb.embed_to_cache(np.concatenate([pixels[:4], pixels[:2]]))
    assert report is emb.report_
    assert (report.n_items, report.n_hits, report.n_embedded) == (6, 0, 4)
    # A second run only checks the cache: it never reads a vector back.
    monkeypatch.setattr(EmbeddingCache, "lookup", None)
    again = emb.embed_to_cache(pixels)
    assert (again.n_hits, again.n_embedded) == (4, 2)
    monkeypatch.undo()
    out = emb.transform(pixels)
    assert emb.report_.n_hits == 6
    np.testing.assert_allclose(out, make_embedder().transform(pixels), atol=1e-6)
    with pytest.raises(ValueError, match="embed_to_cache writes to the cache.*pass cache="):
        make_embedder().embed_to_cache(pixels)


def test_duplicates_in_one_call_are_embedded_once(pixels, tmp_path):
    emb = make_embedder(cache=tmp_path / "emb.h5")
    X = np.concatenate([pixels, pixels[:3]])
    out = emb.fit_transform(X)
    assert emb.report_.n_embedded == 6
    np.testing.assert_array_equal(out[6:], out[:3])


def test_cache_groups_separate_backbone_configurations(pixels, tmp_path):
    from featx import EmbeddingCache

    cache = tmp_path / "emb.h5"
    make_embedder(cache=cache, pooling="avg").fit_transform(pixels)
    emb = make_embedder(cache=cache, pooling="max")
    emb.fit_transform(pixels)
    assert emb.report_.n_hits == 0  # another fingerprint: nothing stale comes back
    groups = EmbeddingCache(cache).groups()
    assert sorted(g.fields["pooling"] for g in groups) == ["avg", "max"]
    assert all(g.rows == 6 for g in groups)


def test_fingerprint_covers_every_setting():
    base = dict(weights=None, layer=None, pooling="avg", input_size=128, resize="resize")
    fp = resolve_backbone("mobilenet", **base).fingerprint
    changes = [
        {"weights": "imagenet"}, {"layer": "conv_pw_13"}, {"pooling": "max"},
        {"input_size": 160}, {"resize": "center_crop"}, {"preprocess": "torch"},
    ]
    for change in changes:
        assert resolve_backbone("mobilenet", **{**base, **change}).fingerprint != fp, change
    assert resolve_backbone("resnet50", **base).fingerprint != fp


def test_on_error_policies(tmp_path, pixels):
    good = []
    for i in range(3):
        p = tmp_path / f"ok{i}.png"
        Image.fromarray(pixels[i]).save(p)
        good.append(str(p))
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a jpeg")
    X = [good[0], str(bad), good[1], str(tmp_path / "missing.png"), good[2]]
    reference = make_embedder().transform(good)

    with pytest.raises(ImageLoadError, match=r"broken\.jpg.*missing\.png.*on_error='skip'"):
        make_embedder().transform(X)

    emb = make_embedder(on_error="skip")
    with pytest.warns(UserWarning, match="skipped 2 of 5"):
        out = emb.transform(X)
    np.testing.assert_allclose(out, reference, atol=1e-6)
    assert emb.report_.dropped == [1, 3]
    assert [f.index for f in emb.report_.failures] == [1, 3]
    assert "file not found" in emb.report_.failures[1].reason

    out = make_embedder(on_error="nan").transform(X)
    assert out.shape == (5, 5)
    assert np.isnan(out[[1, 3]]).all() and not np.isnan(out[[0, 2, 4]]).any()


def test_on_error_raise_still_caches_the_good_images(tmp_path, pixels):
    cache = tmp_path / "emb.h5"
    good = tmp_path / "ok.png"
    Image.fromarray(pixels[0]).save(good)
    with pytest.raises(ImageLoadError):
        make_embedder(cache=cache).transform([str(good), str(tmp_path / "nope.png")])
    emb = make_embedder(cache=cache)
    emb.transform([str(good)])
    assert emb.report_.n_hits == 1


def test_unit_scale_float_images_warn(pixels):
    with pytest.warns(UserWarning, match="0-255 scale"):
        make_embedder().transform(pixels.astype(np.float32) / 255.0)


def test_wrong_inputs_have_clear_errors(pixels):
    emb = make_embedder()
    with pytest.raises(TypeError, match="Wrap it in a list"):
        emb.transform("photo.jpg")
    with pytest.raises(ValueError, match="takes images"):
        ImageEmbedder("mobilenet", weights=None, input_size=32).transform(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="expected an image array of shape"):
        emb.transform(np.zeros((2, 4, 4, 4, 4)))
    with pytest.raises(UnknownBackboneError, match="did you mean 'resnet50'"):
        ImageEmbedder("resnet5").fit(pixels)


def test_clone_params_pickle_and_feature_names(pixels):
    emb = make_embedder(batch_size=3).fit(pixels)
    assert clone(emb).get_params() == emb.get_params()
    assert emb.set_params(batch_size=5).batch_size == 5
    restored = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(restored.transform(pixels), emb.transform(pixels))
    assert list(emb.get_feature_names_out()) == [f"imageembedder{i}" for i in range(5)]


def test_pickle_never_stores_weights(pixels):
    import keras

    emb = ImageEmbedder("mobilenet", weights=None, input_size=32).fit(pixels)
    emb.transform(pixels[:1])
    blob = pickle.dumps(emb)
    assert len(blob) < 20_000  # MobileNet's weights are 13 MB
    assert not any(isinstance(v, keras.Model) for v in vars(pickle.loads(blob)).values())


def test_set_output_pandas(pixels):
    out = make_embedder().set_output(transform="pandas").fit_transform(pixels)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns)[:2] == ["imageembedder0", "imageembedder1"]
    assert out.shape == (6, 5)


def test_verbose_shows_progress(pixels, capsys):
    make_embedder(verbose=True, batch_size=2).transform(pixels)
    assert "img" in capsys.readouterr().err


def test_tabular_model_penultimate_layer(rng, tmp_path):
    import keras

    X = rng.normal(size=(20, 4)).astype(np.float32)
    model = tiny_dense((4,))
    path = tmp_path / "tabular.keras"
    model.save(path)
    out = ImageEmbedder(str(path), layer="hidden").fit_transform(X)
    hidden = keras.Model(model.inputs, model.get_layer("hidden").output)
    np.testing.assert_allclose(out, hidden.predict(X, verbose=0), atol=1e-6)
    assert out.shape == (20, 6)


def test_user_h5_model_cut_at_a_named_layer(rng, tmp_path):
    import keras

    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(3, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=0))(inp)
    x = keras.layers.Flatten(name="flatten_1")(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inp, out)
    path = tmp_path / "trained.h5"
    model.save(path)
    images = rng.integers(0, 256, size=(5, 12, 12), dtype=np.uint8)
    emb = ImageEmbedder(str(path), layer="flatten_1")
    got = emb.fit_transform(images)
    cut = keras.Model(model.inputs, model.get_layer("flatten_1").output)
    # The default engine may be OpenVINO: float32 to a few ulps of Keras, not bit for bit.
    np.testing.assert_allclose(got, cut.predict(images[..., None].astype("float32"), verbose=0),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownBackboneError, match="did you mean 'flatten_1'"):
        ImageEmbedder(str(path), layer="flatten_2").fit_transform(images)


def test_keras_model_object_as_backbone(pixels):
    model = tiny_convnet((16, 16, 3))
    emb = ImageEmbedder(model, layer="conv")
    out = emb.fit_transform(pixels)
    assert out.shape == (6, 4)
    np.testing.assert_array_equal(clone(emb).transform(pixels), out)


def test_random_weights_are_the_same_in_every_process(pixels, tmp_path):
    np.save(tmp_path / "x.npy", pixels)
    code = (
        "import numpy as np, sys; from featx import ImageEmbedder;"
        f"x = np.load({str(tmp_path / 'x.npy')!r});"
        "e = ImageEmbedder('mobilenet', weights=None, input_size=32);"
        f"np.save({str(tmp_path / 'out.npy')!r}, e.fit_transform(x))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    here = ImageEmbedder("mobilenet", weights=None, input_size=32).fit_transform(pixels)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), here, atol=1e-5)


def test_gridsearch_embeds_each_image_once(image_folder, tmp_path):
    """5 folds x 4 candidates over Pipeline(ImageEmbedder(cache), LogisticRegression)."""
    paths, y, _ = load_image_folder(image_folder)
    paths, y = paths * 3, np.concatenate([y] * 3)  # repeated content: still embedded once
    emb = make_embedder(cache=tmp_path / "emb.h5")
    net = network_of(emb)
    before = net.n_seen
    pipe = make_pipeline(emb, LogisticRegression(max_iter=500))
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
    search = GridSearchCV(pipe, grid, cv=5, n_jobs=1).fit(paths, y)
    distinct = len({Path(p).read_bytes() for p in paths})
    assert net.n_seen - before == distinct == 8
    assert search.best_score_ >= 0.5


def test_gridsearch_with_two_processes_equals_one_process(image_folder, tmp_path):
    """GridSearchCV(n_jobs=2) over a cached Pipeline: the same search as n_jobs=1 (choice and
    every fold's score), and its folds, embedding into one cache from two processes, leave each
    image in it once, with the rows a process without a cache computes."""
    paths, y, _ = load_image_folder(image_folder)
    paths, y = paths * 2, np.concatenate([y, y])  # repeated content, embedded by both workers
    grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}
    searches = {}
    for n_jobs in (2, 1):
        cache = tmp_path / f"emb{n_jobs}.h5"
        pipe = make_pipeline(make_embedder(cache=cache), LogisticRegression(max_iter=500))
        searches[n_jobs] = GridSearchCV(pipe, grid, cv=4, n_jobs=n_jobs).fit(paths, y)
    two, one = searches[2], searches[1]
    assert two.best_params_ == one.best_params_
    for name in ("mean_test_score", *(f"split{i}_test_score" for i in range(4))):
        np.testing.assert_array_equal(two.cv_results_[name], one.cv_results_[name])
    np.testing.assert_array_equal(two.predict(paths), one.predict(paths))
    (group,) = EmbeddingCache(tmp_path / "emb2.h5").groups()
    keys, _, _ = EmbeddingCache(tmp_path / "emb2.h5").read_group(group.fingerprint)
    assert len(keys) == len(set(keys)) == group.rows == 8  # each image once
    cached = make_embedder(cache=tmp_path / "emb2.h5")
    np.testing.assert_allclose(cached.fit_transform(paths[:8]),
                               make_embedder().fit_transform(paths[:8]), rtol=1e-5)
    assert (cached.report_.n_hits, cached.report_.n_embedded) == (8, 0)
