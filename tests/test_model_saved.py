"""featx.model.saved: the .featx file, loading it in a new process, and what a load refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import featx
from featx import (
    FeatxError,
    FeatxModel,
    ImageEmbedder,
    ModelVersionWarning,
    UntrustedModelError,
    load_model,
    make_head,
    read_manifest,
    save_model,
)
from featx.model import TRUSTED_TYPES
from tests.conftest import save_tiny_convnet, tiny_convnet


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 10 PNG files each (the second with a bright red channel)."""
    root = tmp_path_factory.mktemp("saved") / "images"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            arr = rng.integers(0, 200, size=(20, 20, 3), dtype=np.uint8)
            if c:
                arr[..., 0] = 255
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def backbone_file(folder: Path) -> Path:
    path = folder.parent / "tiny.keras"
    save_tiny_convnet(path, 16)
    return path


def fitted(embedder: ImageEmbedder, folder: Path, head=None) -> tuple[FeatxModel, list[str]]:
    paths, y, classes = featx.load_image_folder(folder)
    names = np.asarray(classes)[y]
    X = embedder.fit_transform(paths)
    head = head or make_head("logreg", clf__C=1.0)
    return FeatxModel(embedder, head.fit(X, names)), paths


def test_a_loaded_model_predicts_the_same_in_a_new_process(folder, backbone_file, tmp_path):
    # Two backbones rebuilt from configuration: a model file, and a registry network.
    models = {
        "file": fitted(ImageEmbedder(str(backbone_file), input_size=16), folder),
        "registry": fitted(ImageEmbedder("mobilenet", weights=None, input_size=32), folder,
                           make_head("knn", clf__n_neighbors=3)),
    }
    expected = {}
    for name, (model, paths) in models.items():
        model.save(tmp_path / f"{name}.featx")
        expected[name] = {"labels": model.predict(paths).tolist(),
                          "proba": model.predict_proba(paths).tolist()}
    paths = models["file"][1]
    code = (
        "import json, sys; from featx import load_model\n"
        f"paths = {paths!r}\n"
        "out = {}\n"
        "for name in ('file', 'registry'):\n"
        f"    m = load_model({str(tmp_path)!r} + f'/{{name}}.featx')\n"
        "    out[name] = {'labels': m.predict(paths).tolist(),\n"
        "                 'proba': m.predict_proba(paths).tolist()}\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.splitlines()[-1])
    for name in models:
        assert got[name]["labels"] == expected[name]["labels"]
        np.testing.assert_allclose(got[name]["proba"], expected[name]["proba"], atol=1e-6)
    assert set(expected["file"]["labels"]) == {"cat", "dog"}


def test_the_file_holds_configuration_and_versions_not_weights(folder, tmp_path):
    model, _ = fitted(ImageEmbedder("mobilenet", weights=None, input_size=32), folder)
    path = model.save(tmp_path / "m.featx")
    assert path.stat().st_size < 50_000  # MobileNet's weights alone are 13 MB
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["head.skops", "manifest.json"]
    manifest = read_manifest(path)
    assert manifest["format"] == "featx-model" and manifest["format_version"] == 1
    versions = manifest["versions"]
    assert versions["featx"] == featx.__version__
    assert versions["scikit-learn"] and versions["keras"]
    params = manifest["embedder"]["params"]
    assert params["backbone"] == "mobilenet" and params["weights"] is None
    assert params["input_size"] == 32 and params["cache"] is None
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["head"]["type"] == "Pipeline(StandardScaler, LogisticRegression)"
    loaded = load_model(path)
    assert loaded.embedder.get_params() == model.embedder.get_params()
    assert loaded.manifest == manifest


def test_a_fitted_pipeline_saves_too(folder, backbone_file, tmp_path):
    paths, y, _ = featx.load_image_folder(folder)
    pipe = make_pipeline(ImageEmbedder(str(backbone_file), input_size=16, cache=tmp_path / "c.h5"),
                         StandardScaler(), LogisticRegression()).fit(paths, y)
    save_model(pipe, tmp_path / "pipe.featx", info={"note": "from a pipeline"})
    loaded = load_model(tmp_path / "pipe.featx")
    assert loaded.embedder.cache is None  # a cache belongs to a machine, not to the model
    np.testing.assert_array_equal(loaded.predict(paths), pipe.predict(paths))
    assert loaded.info == {"note": "from a pipeline"}
    with pytest.raises(FeatxError, match="first step is an ImageEmbedder"):
        save_model(LogisticRegression(), tmp_path / "x.featx")


def test_a_knn_index_is_a_member_of_its_own_streamed_and_checked(folder, backbone_file,
                                                                   tmp_path):
    from featx.heads.knn_index import IndexKNNClassifier

    paths, y, _ = featx.load_image_folder(folder)
    pipe = make_pipeline(ImageEmbedder(str(backbone_file), input_size=16, cache=tmp_path / "c.h5"),
                         IndexKNNClassifier(3, exact_below=1, nlist=1)).fit(paths, y)
    assert pipe[-1].index_kind_ == "ivf-disk"
    path = save_model(pipe, tmp_path / "knn.featx")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["head.skops", "index-0.bin", "manifest.json"]
        assert zf.getinfo("index-0.bin").compress_type == zipfile.ZIP_STORED
        assert b"index-0.bin" in zf.read("head.skops")  # the head names its member ...
    knn = pipe[-1]
    assert knn.index_ is not None and not hasattr(knn, "index_member_")  # ... the original kept
    loaded = load_model(path)
    assert not hasattr(loaded.head, "index_member_")
    np.testing.assert_array_equal(loaded.predict_proba(paths), pipe.predict_proba(paths))

    altered = tmp_path / "altered.featx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(altered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:-1] + bytes([data[-1] ^ 1]) if item.filename.endswith(
                ".bin") else data)
    with pytest.raises(FeatxError, match=r"index-0.bin does not match the sha256"):
        load_model(altered)


def test_backbones_that_are_not_configuration_are_refused(folder, tmp_path):
    keras_model = tiny_convnet((16, 16, 3))
    model, _ = fitted(ImageEmbedder(keras_model), folder)
    with pytest.raises(FeatxError, match="backbone is a keras.Model.*model.save"):
        model.save(tmp_path / "m.featx")
    model.embedder = ImageEmbedder(tiny_convnet, input_size=16)
    with pytest.raises(FeatxError, match="backbone is function"):
        model.save(tmp_path / "m.featx")
    model.embedder = ImageEmbedder("mobilenet", weights=None, preprocess=lambda x: x)
    with pytest.raises(FeatxError, match="preprocess=.* is not plain data"):
        model.save(tmp_path / "m.featx")
    assert not (tmp_path / "m.featx").exists()


class Marker(ClassifierMixin, BaseEstimator):
    """A head of a type neither skops nor featx trusts."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_unknown_types_are_refused_by_name_until_trusted(folder, backbone_file, tmp_path):
    model, paths = fitted(ImageEmbedder(str(backbone_file), input_size=16), folder,
                          make_pipeline(StandardScaler(), Marker()))
    path = model.save(tmp_path / "marker.featx")
    name = f"{Marker.__module__}.Marker"
    with pytest.raises(UntrustedModelError, match=f"does not trust: {name}.*trusted=") as info:
        load_model(path)
    assert info.value.types == [name]
    loaded = load_model(path, trusted=[name])
    assert loaded.predict(paths[:2]).tolist() == ["cat", "cat"]


def test_every_preset_head_loads_with_the_default_trust(tmp_path):
    import skops.io as sio

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 20)).astype(np.float32)
    y = np.arange(60) % 3
    for name in featx.list_heads():
        head = make_head(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head.fit(X, y)
        untrusted = sio.get_untrusted_types(data=sio.dumps(head))
        assert set(untrusted) <= set(TRUSTED_TYPES), name
    knn = make_head("knn").set_params(clf__algorithm="kd_tree").fit(X, y)
    assert set(sio.get_untrusted_types(data=sio.dumps(knn))) <= set(TRUSTED_TYPES)


def rewrite(path: Path, target: Path, *, manifest=None, head: bytes | None = None) -> Path:
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("manifest.json"))
        head_bytes = zf.read("head.skops")
    if manifest:
        manifest(data)
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("manifest.json", json.dumps(data))
        zf.writestr("head.skops", head if head is not None else head_bytes)
    return target


@pytest.fixture
def saved(folder, backbone_file, tmp_path) -> Path:
    model, _ = fitted(ImageEmbedder(str(backbone_file), input_size=16), folder)
    return model.save(tmp_path / "model.featx")


def test_version_mismatch_warns_naming_both_versions(saved, tmp_path):
    import sklearn

    def older(m):
        m["versions"]["scikit-learn"] = "0.0.1"
        m["versions"]["keras"] = "2.0.0"

    path = rewrite(saved, tmp_path / "old.featx", manifest=older)
    with pytest.warns(ModelVersionWarning) as record:
        load_model(path)
    message = str(record[0].message)
    assert f"scikit-learn 0.0.1 (now {sklearn.__version__})" in message
    assert "keras 2.0.0 (now" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(saved)  # same versions: silent


def test_damaged_or_foreign_files_are_refused(saved, tmp_path):
    def newer(m):
        m["format_version"] = 99

    with pytest.raises(FeatxError, match="format 99, written by a newer featx.*Upgrade featx"):
        load_model(rewrite(saved, tmp_path / "new.featx", manifest=newer))
    with pytest.raises(FeatxError, match="does not match the sha256"):
        load_model(rewrite(saved, tmp_path / "tampered.featx", head=b"PK\x03\x04 altered"))
    (tmp_path / "text.featx").write_text("not a zip")
    with pytest.raises(FeatxError, match="not a zip archive"):
        load_model(tmp_path / "text.featx")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FeatxError, match="no manifest.json"):
        load_model(tmp_path / "other.zip")
    with pytest.raises(FeatxError, match="does not exist"):
        load_model(tmp_path / "missing.featx")


def test_a_changed_backbone_file_is_refused(folder, tmp_path):
    import keras

    backbone = tmp_path / "net.keras"
    save_tiny_convnet(backbone, 16)
    model, _ = fitted(ImageEmbedder(str(backbone), input_size=16), folder)
    path = model.save(tmp_path / "m.featx")
    other = tiny_convnet((16, 16, 3))
    other.set_weights([w + 1 for w in other.get_weights()])
    other.save(backbone)
    keras.backend.clear_session()
    with pytest.raises(FeatxError, match="no longer gives the embeddings its head was trained"):
        load_model(path)
    backbone.unlink()
    with pytest.raises(FeatxError, match="cannot be resolved here.*does not exist"):
        load_model(path)


def test_safe_mode_is_the_loaders_choice(saved, tmp_path):
    def unsafe(m):
        m["embedder"]["params"]["safe_mode"] = False

    path = rewrite(saved, tmp_path / "unsafe.featx", manifest=unsafe)
    assert load_model(path).embedder.safe_mode is True
    assert load_model(path, safe_mode=False).embedder.safe_mode is False


def test_predict_items_reports_unreadable_files_and_heads_without_probabilities(
    folder, backbone_file, tmp_path
):
    model, paths = fitted(ImageEmbedder(str(backbone_file), input_size=16), folder)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = model.predict_items([paths[0], str(bad), paths[-1]])
    assert [p.label for p in items] == ["cat", None, "dog"]
    assert items[1].error and "Pillow" in items[1].error and items[1].probabilities is None
    assert sum(items[0].probabilities.values()) == pytest.approx(1.0)
    svm, _ = fitted(ImageEmbedder(str(backbone_file), input_size=16), folder,
                    make_head("linear_svm"))
    assert not svm.has_proba
    with pytest.raises(FeatxError, match="gives no probabilities"):
        svm.predict_proba(paths[:1])
    assert svm.predict_items(paths[:1])[0].probabilities is None
