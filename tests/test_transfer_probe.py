"""featx.transfer.probe: several depths in one pass, each cached where its embedder reads."""

from __future__ import annotations

import numpy as np
import pytest

from featx import FeatxError, ImageEmbedder, tune_heads
from featx.nets.build import get_network
from featx.transfer.probe import LayerProbe, probe_layers


def three_convs(shape):
    """A deterministic three-stage convnet: 'early', 'middle', 'late' (the default cut)."""
    import keras

    init = keras.initializers.GlorotUniform(seed=5)
    x = inp = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init, name="early")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu", kernel_initializer=init,
                            name="middle")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=init,
                            name="late")(x)
    return keras.Model(inp, x, name="three_convs")


def labelled_images(n_per_class=16, size=16, seed=0):
    """Two classes told apart by brightness and a stripe, with noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["dark", "light"], n_per_class)
    brightness = rng.integers(0, 120, size=len(y)) + 30 * (y == "light")
    noise = rng.integers(0, 100, size=(len(y), size, size, 3))
    images = (noise + brightness[:, None, None, None]).astype(np.uint8)
    images[y == "light", :, ::4] += 20
    return images, y


KW = dict(heads=["logreg", "knn"], cv=3)


def tiny(**params) -> ImageEmbedder:
    """The embedder the probes below start from: three_convs at 16 px on Keras."""
    return ImageEmbedder(three_convs, input_size=16, engine="keras", **params)


def test_one_pass_every_layer_cached_where_its_embedder_reads(tmp_path):
    images, y = labelled_images()
    cache = tmp_path / "emb.h5"
    probe = probe_layers(images, y, embedder=tiny(cache=cache), layers=["early", "middle", None],
                         **KW)
    assert isinstance(probe, LayerProbe)
    # One forward pass for all three layers: each image went through the network once.
    configs = [
        ImageEmbedder(three_convs, input_size=16, layer=lay, engine="keras").backbone_config()
        for lay in ["early", "middle", None]
    ]
    assert get_network(configs, (16, 16, 3)).n_seen == len(images)
    assert probe.n_embedded == len(images) and probe.n_hits == 0
    assert [p.name for p in probe.layers] == ["early", "middle", "default"]
    assert [p.width for p in probe.layers] == [4, 6, 8]
    # A later embedder at any probed layer reads every row from the probe's cache group.
    for p in probe.layers:
        emb = ImageEmbedder(three_convs, input_size=16, layer=p.layer, cache=cache,
                            engine="keras")
        rows = emb.transform(images)
        assert emb.report_.n_hits == len(images) and emb.report_.n_embedded == 0
        assert emb.backbone_config().fingerprint == p.fingerprint
        fresh = ImageEmbedder(three_convs, input_size=16, layer=p.layer,
                              engine="keras").transform(images)
        np.testing.assert_allclose(rows, fresh, rtol=1e-5, atol=1e-6)
    # A second probe embeds nothing.
    again = probe_layers(images, y, embedder=tiny(cache=cache), layers=["early", "middle", None],
                         **KW)
    assert again.n_embedded == 0 and again.n_hits == len(images)
    assert probe.embedder().get_params()["layer"] == probe.best_layer.layer


def test_rows_are_tune_heads_own_numbers_with_a_layer_column(tmp_path):
    images, y = labelled_images()
    probe = probe_layers(images, y, embedder=tiny(), layers=["early", "late"], test_size=0.25,
                         **KW)
    assert probe.columns == ["layer"] and len(probe) == 4
    assert {(r.extra["layer"], r.head) for r in probe} == {
        (lay, h) for lay in ("early", "late") for h in ("logreg", "knn")}
    assert [r.cv_mean for r in probe] == sorted((r.cv_mean for r in probe), reverse=True)
    X = ImageEmbedder(three_convs, input_size=16, layer="early", engine="keras").transform(images)
    alone = tune_heads(X, y, heads=["logreg", "knn"], cv=3, test_size=0.25)
    for r in alone:
        row = next(p for p in probe if p.extra["layer"] == "early" and p.head == r.head)
        assert row.cv_mean == pytest.approx(r.cv_mean) and row.cv_std == pytest.approx(r.cv_std)
        assert row.test_score == pytest.approx(r.test_score)
    assert probe.n_train == 24 and probe.n_test == 8
    lines = probe.to_text().splitlines()
    assert lines[0].split()[:3] == ["#", "layer", "head"]


def test_a_given_test_set_is_embedded_in_the_same_pass_scored_and_never_tuned_on(tmp_path):
    from PIL import Image

    images, y = labelled_images()
    test_images, test_y = labelled_images(n_per_class=5, seed=1)
    folder = tmp_path / "test"
    folder.mkdir()
    paths = []
    for i, pixels in enumerate(test_images):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    train_paths = []
    for i, pixels in enumerate(images):
        train_paths.append(str(folder / f"train{i}.png"))
        Image.fromarray(pixels).save(train_paths[-1])
    (folder / "broken.png").write_bytes(b"not a png")
    test = ([*paths[:3], str(folder / "broken.png"), *paths[3:]],
            np.concatenate([test_y[:3], ["dark"], test_y[3:]]))
    cache = tmp_path / "emb.h5"
    probe = probe_layers(train_paths, y, embedder=tiny(cache=cache, on_error="skip"),
                         layers=["early", "late"], test=test, **KW)
    assert probe.n_train == 32 and probe.n_test == 10 and probe.test_dropped == [3]
    assert probe.dropped == [] and probe.n_embedded == 42  # one pass: training and test
    assert list(probe.y_true) == list(test_y)
    # Each row is what tune_heads gives with the same rows as test=.
    emb = ImageEmbedder(three_convs, input_size=16, layer="late", engine="keras", cache=cache)
    X, X_test = emb.transform(train_paths), emb.transform(paths)
    assert emb.report_.n_embedded == 0  # the probe cached the test images too
    alone = tune_heads(X, y, test=(X_test, test_y), heads=["logreg", "knn"], cv=3)
    for r in alone:
        row = next(p for p in probe if p.extra["layer"] == "late" and p.head == r.head)
        assert row.cv_mean == pytest.approx(r.cv_mean)
        assert row.test_score == pytest.approx(r.test_score)


@pytest.mark.parametrize("test, message", [
    ((np.zeros((4, 16, 16, 3), np.uint8), ["dark"] * 3), r"test= must hold one label per image"),
    (np.zeros((4, 16, 16, 3), np.uint8), r"test= must be a pair \(images, y\)"),
    ((np.zeros((4, 5)), ["dark"] * 4), "test= holds vectors but the training set holds images"),
])
def test_a_bad_test_set_is_refused_saying_why(test, message):
    images, y = labelled_images(n_per_class=4)
    with pytest.raises(FeatxError, match=message):
        probe_layers(images, y, embedder=tiny(), layers=["early"], test=test, **KW)
    with pytest.raises(FeatxError, match="test=.*or test_size=, not both"):
        probe_layers(images, y, embedder=tiny(), layers=["early"], test=(images, y),
                     test_size=0.25, **KW)


def test_decision_names_the_winner_the_margin_over_the_default_cut_and_the_spread():
    images, y = labelled_images()
    probe = probe_layers(images, y, embedder=tiny(), layers=["early", "middle", None], **KW)
    text = probe.decision()
    best = probe.best
    assert text.startswith(f"best: {best.head} at {best.extra['layer']} (depth ")
    assert f"{best.cv_mean:.3f} ± {best.cv_std:.3f} over 3 folds" in text
    assert 0.5 < best.cv_mean < 1 and best.cv_std > 0  # a data set that is not trivial
    if probe.best_layer.is_default:
        assert "the default cut (default) wins" in text
    else:
        ref = probe.best_at("default")
        assert f"the default cut (default, depth 3) scores {ref.cv_mean:.3f}" in text
        assert f"{best.cv_mean - ref.cv_mean:+.3f} better" in text
    assert "fold std" in text and ("within the fold spread" in text or "beyond" in text)
    # Without the default cut, the deepest probed layer is the reference.
    shallow = probe_layers(images, y, embedder=tiny(), layers=["early", "middle"], **KW)
    assert "the deepest layer probed" in shallow.decision() or "wins" in shallow.decision()


def test_registry_backbone_auto_layers_end_at_the_default_cut_group(tmp_path):
    images, y = labelled_images(n_per_class=6, size=32)
    cache = tmp_path / "emb.h5"
    embedder = ImageEmbedder("mobilenet", weights=None, input_size=32, cache=cache,
                             engine="keras")
    probe = probe_layers(images, y, embedder=embedder, heads=["logreg"], cv=2)
    names = [p.name for p in probe.layers]
    assert names == ["conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_8_relu",
                     "conv_pw_11_relu", "conv_pw_13_relu"]
    assert probe.layers[-1].layer is None
    default = ImageEmbedder("mobilenet", weights=None, input_size=32, cache=cache,
                            engine="keras")
    default.transform(images)
    assert default.report_.n_hits == len(images) and default.report_.n_embedded == 0
    assert [p.width for p in probe.layers] == [64, 128, 256, 512, 512, 1024]


def test_wide_flattened_layers_are_refused_before_embedding(tmp_path):
    images, y = labelled_images()
    cache = tmp_path / "emb.h5"
    with pytest.raises(FeatxError, match=r"'early' gives 784 features.*limit of 500.*"
                       r"pooling='avg' or pooling='max'"):
        probe_layers(images, y, embedder=tiny(pooling="flatten", cache=cache),
                     layers=["early", "late"], max_flatten_width=500, **KW)
    assert not cache.exists()
    probe = probe_layers(images, y, embedder=tiny(pooling="flatten"), layers=["middle", "late"],
                         max_flatten_width=500, **KW)
    assert [p.width for p in probe.layers] == [6 * 6 * 6, 8 * 2 * 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers="auto"), "layers='auto' needs a registry backbone.*Name the layers"),
    (dict(layers=["early", "early"]), "names a layer twice"),
    (dict(layers=[]), "Expected 'auto' or a list of layer names"),
    (dict(layers=["early"], embedder=tiny(pooling="none")),
     "pooling='none' cannot be probed.*'avg'"),
    (dict(layers=["early"], embedder=tiny(on_error="nan")),
     "on_error='nan' cannot be probed.*'raise' or 'skip'"),
    (dict(layers=["early"], embedder=tiny(layer="late")),
     "cut at layer='late'.*leave the embedder's layer out"),
])
def test_bad_arguments_say_what_to_do(kwargs, message):
    images, y = labelled_images(n_per_class=4)
    with pytest.raises(FeatxError, match=message):
        probe_layers(images, y, **{"embedder": tiny(), **KW, **kwargs})


def test_labels_must_match_the_images():
    images, y = labelled_images(n_per_class=4)
    with pytest.raises(FeatxError, match=r"one label per image \(8\); got shape \(7,\)"):
        probe_layers(images, y[:7], embedder=tiny(), layers=["early"], **KW)


def test_a_trusted_model_file_is_probed_through_the_embedder_s_safe_mode(tmp_path):
    """The embedder carries every option: a file whose Lambda layer needs safe_mode=False is
    probed with it (and refused without), and the decoder reaches the probe's one pass."""
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="early")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="late")(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, x).save(path)
    images, y = labelled_images(n_per_class=6)
    with pytest.raises(FeatxError, match="safe mode"):
        probe_layers(images, y, embedder=ImageEmbedder(path, engine="keras"),
                     layers=["early", "late"], heads=["logreg"], cv=2)
    trusted = ImageEmbedder(path, engine="keras", safe_mode=False, decoder="pillow")
    probe = probe_layers(images, y, embedder=trusted, layers=["early", "late"],
                         heads=["logreg"], cv=2)
    assert [p.width for p in probe.layers] == [4, 6]
    assert probe.embedder().get_params()["safe_mode"] is False
    assert probe.embedder(layer="early").backbone_config().decoder == "pillow"
