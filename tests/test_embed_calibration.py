"""The calibration of precision="int8": made once per fitted embedder, shared by its later calls
and by the clones of a search through the cache's group, chosen on the command line with
--calibration, and refused where it cannot run (Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featx import ImageEmbedder
from featx.cache.store import open_cache
from featx.cli.main import main
from featx.exceptions import FeatxError


def tiny(shape):
    import keras

    init = keras.initializers.GlorotUniform(seed=7)
    inp = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init)(inp)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


@pytest.fixture(autouse=True)
def allow_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantize on any CPU: the numbers are checked here, the speed in the benchmarks."""
    monkeypatch.setenv("FEATX_ALLOW_INT8", "1")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def int8_groups(cache: Path) -> list[str]:
    return sorted(g.fields["precision"] for g in open_cache(cache).groups()
                  if g.fields["precision"].startswith("int8"))


def test_a_fitted_embedder_calibrates_once(tmp_path: Path) -> None:
    """fit calibrates on its images; transforms of other images (whose first images differ)
    reuse that calibration: one quantized network, one cache group, the fit's rows found."""
    X = images(48)
    cache = tmp_path / "c.h5"
    emb = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache).fit(X)
    digest = emb.config_.calibration_id
    assert digest and emb.config_.fingerprint_fields["precision"] == f"int8@openvino:{digest}"
    first = emb.transform(X)
    later = emb.transform(X[40:][::-1])  # 8 images, not enough to calibrate on by themselves
    assert emb.report_.n_hits == 8 and emb.report_.n_embedded == 0
    np.testing.assert_array_equal(later, first[40:][::-1])
    assert int8_groups(cache) == [f"int8@openvino:{digest}"]


def test_an_unfitted_embedder_calibrates_on_its_first_transform(tmp_path: Path) -> None:
    X = images(40)
    cache = tmp_path / "c.h5"
    emb = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache)
    emb.transform(X)
    # Another set of first images: still the first call's calibration, so its rows are found.
    emb.transform(np.concatenate([X[8:], images(8, seed=2)]))
    assert (emb.report_.n_hits, emb.report_.n_embedded) == (32, 8)
    assert len(int8_groups(cache)) == 1


def test_a_fixed_calibration_set_is_shared_by_separate_fits(tmp_path: Path) -> None:
    """What a grid search's folds need: each fold fits its own clone on other images."""
    X, calibration = images(60), images(32, seed=1)
    cache = tmp_path / "c.h5"
    for fold in (X[:30], X[30:]):
        ImageEmbedder(tiny, input_size=16, precision="int8", calibration=calibration,
                      cache=cache).fit_transform(fold)
    assert len(int8_groups(cache)) == 1


def test_separate_fits_share_the_calibration_of_the_cache_s_group(tmp_path: Path) -> None:
    """Without calibration=, a fit finds the INT8 group the cache holds for its configuration
    (calibrated in this process) instead of calibrating on its own first images; a fixed
    calibration= or another configuration calibrates on its own."""
    X = images(60)
    cache = tmp_path / "c.h5"
    first = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache).fit(X[:32])
    first.transform(X[:32])
    second = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache).fit(X[28:])
    assert second.config_.calibration_id == first.config_.calibration_id
    second.transform(X[28:])
    assert (second.report_.n_hits, second.report_.n_embedded) == (4, 28)
    assert len(int8_groups(cache)) == 1
    # Without a cache, or in a cache without that group, a fit calibrates on its own images.
    alone = ImageEmbedder(tiny, input_size=16, precision="int8").fit(X[28:])
    elsewhere = ImageEmbedder(tiny, input_size=16, precision="int8",
                              cache=tmp_path / "other.h5").fit(X[28:])
    assert alone.config_.calibration_id == elsewhere.config_.calibration_id != (
        first.config_.calibration_id)
    fixed = ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache,
                          calibration=images(32, seed=1)).fit(X)
    assert fixed.config_.calibration_id not in ("", first.config_.calibration_id)
    other_cut = ImageEmbedder(tiny, input_size=16, precision="int8", pooling="max",
                              cache=cache).fit(X[28:])
    assert other_cut.config_.calibration_id == alone.config_.calibration_id


def test_a_grid_search_over_an_int8_pipeline_embeds_each_image_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GridSearchCV clones the Pipeline per fold and candidate, and each clone's embedder is
    fitted on another fold: one quantized network, one cache group, each image decoded for the
    network once (the refit included)."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    import featx.embed.engine as engine_module

    rng = np.random.default_rng(5)
    paths, y = [], []
    for i in range(60):
        label = i % 2
        pixels = rng.integers(0, 128, (16, 16, 3), dtype=np.uint8) + 127 * label
        paths.append(str(tmp_path / f"img{i:02d}.png"))
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
        y.append(label)
    decoded: list[str] = []
    real = engine_module.load_pixels

    def counting(item, *args, **kwargs):  # as load_pixels
        decoded.append(item.name)
        return real(item, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pixels", counting)
    cache = tmp_path / "c.h5"
    pipe = make_pipeline(ImageEmbedder(tiny, input_size=16, precision="int8", cache=cache),
                         LogisticRegression(max_iter=500))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=1)
    search.fit(paths, y)
    assert sorted(decoded) == sorted(paths)  # each image through the network once
    (group,) = open_cache(cache).groups()
    assert group.rows == 60 and group.fields["precision"].startswith("int8@openvino:")
    assert search.best_estimator_[0].report_.n_hits == 60


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    from PIL import Image

    tiny((16, 16, 3)).save(tmp_path / "tiny.keras")
    rng = np.random.default_rng(3)
    for folder, n in (("images/a", 18), ("images/b", 18), ("calibration", 32)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (18 + i % 5, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / folder / f"{folder[-1]}{i:02d}.png")
    return tmp_path


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def test_the_command_line_calibrates_on_its_calibration_folder(workspace: Path, capsys) -> None:
    base = ["embed", str(workspace / "images"), "--backbone", str(workspace / "tiny.keras"),
            "--input-size", "16", "--precision", "int8", "-v"]
    assert main([*base, "--cache", str(workspace / "a.h5"),
                 "--calibration", str(workspace / "calibration")]) == 0
    assert main([*base, "--cache", str(workspace / "b.h5")]) == 0
    from_folder = int8_groups(workspace / "a.h5")
    from_first = int8_groups(workspace / "b.h5")
    assert len(from_folder) == len(from_first) == 1 and from_folder != from_first
    # The digest is the calibration folder's content, as the library computes it.
    emb = ImageEmbedder(str(workspace / "tiny.keras"), input_size=16, precision="int8",
                        calibration=image_paths(workspace / "calibration"))
    emb.fit(image_paths(workspace / "images"))
    assert from_folder == [f"int8@openvino:{emb.config_.calibration_id}"]
    capsys.readouterr()
    assert main(["embed", str(workspace / "images"), "--backbone",
                 str(workspace / "tiny.keras"), "--cache", str(workspace / "c.h5"),
                 "--calibration", str(workspace / "calibration")]) == 1
    assert "--calibration is for --precision int8" in capsys.readouterr().err


def test_int8_on_ray_is_refused_before_any_cluster_starts(tmp_path: Path) -> None:
    import ray

    from featx.distributed import embed_on_ray

    emb = ImageEmbedder(tiny, input_size=16, precision="int8", cache=tmp_path / "c.h5")
    with pytest.raises(FeatxError, match="precision='int8' does not run on Ray yet"):
        embed_on_ray(images(4), emb)
    assert not ray.is_initialized()


def test_heads_reads_an_int8_group_back_with_its_calibration(workspace: Path, capsys) -> None:
    """A cache cannot rebuild an INT8 network (it does not hold the calibration images): heads
    says what to pass, and with them finds every row in the cache."""
    model, images = str(workspace / "tiny.keras"), str(workspace / "images")
    calibration, cache = str(workspace / "calibration"), str(workspace / "c.h5")
    assert main(["embed", images, "--backbone", model, "--input-size", "16", "--cache", cache,
                 "--precision", "int8", "--calibration", calibration, "-q"]) == 0
    capsys.readouterr()
    out = str(workspace / "out")
    assert main(["heads", images, "--cache", cache, "--out", out, "--heads", "logreg"]) == 1
    err = capsys.readouterr().err
    assert "embedded in INT8" in err and "--calibration" in err
    assert main(["heads", images, "--cache", cache, "--out", out, "--heads", "logreg",
                 "--cv", "2", "--backbone", model, "--input-size", "16",
                 "--precision", "int8", "--calibration", calibration]) == 0
    assert "36 embeddings from the cache" in capsys.readouterr().out
