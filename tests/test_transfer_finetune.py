"""fine_tune: the Keras guide's two phases on featx's own pixels, into a safe-mode .keras backbone.

Tiny networks and tiny images throughout; one fine-tuning run (module scope) is inspected by
several tests. The JAX backend runs in a subprocess, since Keras fixes its backend at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featx import FeatxError, ImageEmbedder, ImageLoadError, load_model, read_manifest
from featx.nets.tuned_file import METADATA_NAME, read_tuned_metadata
from featx.transfer.finetune import fine_tune
from featx.transfer.finetune_data import augment_pixels
from tests.conftest import featx_main

FEATX = Path(sys.executable).parent / "featx"


def tiny_backbone(shape=(16, 16, 3)):
    """conv -> BN -> relu -> conv -> BN -> relu: two trainable layers, two BatchNormalizations."""
    import keras

    init = keras.initializers.GlorotUniform(seed=5)
    inp = keras.Input(shape)
    x = keras.layers.Conv2D(6, 3, kernel_initializer=init, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, kernel_initializer=init, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    return keras.Model(inp, x, name="tiny")


def striped_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 bright on the left, class 1 bright on the right, class 2 bright at the top."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, size=(n, 20, 20), dtype=np.uint8)
    y = np.arange(n) % 3
    images[y == 0, :, :8] += 150
    images[y == 1, :, 12:] += 150
    images[y == 2, :8, :] += 150
    return images, np.array(["left", "right", "top"])[y]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "tiny.keras"
    model = tiny_backbone()
    # Non-trivial moving statistics, so that "they did not move" means something.
    model.get_layer("bn1").moving_mean.assign(np.full(6, 0.5, np.float32))
    model.save(path)
    return path


@pytest.fixture(scope="module")
def tuned(backbone_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    images, y = striped_images(60)
    out = tmp_path_factory.mktemp("tuned") / "tuned.keras"
    lines: list[str] = []
    returned = fine_tune(
        images, y, out=out, embedder=ImageEmbedder(backbone_file, preprocess="scale"),
        top_layers=3,
        epochs=3, learning_rate=0.05, head_epochs=5, validation_split=0.2, batch_size=8,
        augment=True, patience=3, log=lines.append,
    )
    return {"out": out, "returned": returned, "lines": lines, "images": images, "y": y}


def keras_load(path: Path):
    import keras

    return keras.models.load_model(path, compile=False, safe_mode=True)


def test_writes_a_keras_file_that_loads_in_safe_mode(tuned):
    import keras

    assert tuned["returned"] == tuned["out"]
    model = keras_load(tuned["out"])
    assert not any(isinstance(lay, keras.layers.Lambda) for lay in model.layers)
    assert model.output_shape == (None, 3)  # the new classifier, 3 classes
    names = [lay.name for lay in model.layers]
    assert names[-3:] == ["featx_features", "featx_dropout", "featx_classifier"]
    assert not list(tuned["out"].parent.glob(".*tmp*"))  # the temporary file was renamed


def test_the_file_carries_what_featx_needs(tuned):
    meta = read_tuned_metadata(tuned["out"])
    assert meta is not None
    assert meta["features_layer"] == "featx_features"
    assert meta["preprocess"] == "scale"
    assert meta["input_size"] == [16, 16]
    assert meta["classes"] == ["left", "right", "top"]
    train = meta["training"]
    assert train["unfrozen_from"] == "conv2" and train["top_layers"] == 3 and train["depth"] == 6
    assert train["n_train"] == 48 and train["n_validation"] == 12
    assert 1 <= train["epochs_run"] <= 3


def test_progress_per_phase_and_per_epoch(tuned):
    text = "\n".join(tuned["lines"])
    assert "48 training and 12 validation images, 3 classes, 16x16 px" in text
    assert "new classifier on frozen features:" in text
    assert "fine-tuning the top 3 of 6 layers (from 'conv2')" in text
    epochs = [line for line in tuned["lines"] if line.startswith("epoch ")]
    assert epochs and epochs[0].startswith("epoch 1/3: loss ")
    assert "val_accuracy" in epochs[0]


def test_only_the_top_layers_moved_and_batchnorm_statistics_did_not(tuned, backbone_file):
    before = {lay.name: lay.get_weights() for lay in keras_load(backbone_file).layers}
    after = {lay.name: lay.get_weights() for lay in keras_load(tuned["out"]).layers}
    for name in ("conv1", "bn1", "bn2"):  # frozen below, and BatchNormalization everywhere
        for w0, w1 in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(w0, w1, err_msg=name)
    np.testing.assert_array_equal(after["bn1"][2], np.full(6, 0.5, np.float32))
    assert not np.array_equal(before["conv2"][0], after["conv2"][0])  # unfrozen and trained


def test_embedder_cuts_at_the_features_layer_with_the_training_preprocessing(tuned):
    import keras

    images = tuned["images"][:7]
    embedder = ImageEmbedder(tuned["out"])
    X = embedder.fit_transform(images)
    assert X.shape == (7, 8)
    config = embedder.config_
    assert config.layer == "featx_features" and config.preprocess == "scale"
    # By hand: the same resize, /255, the network up to the features layer.
    from featx.embed.images import as_items, load_pixels

    pixels = np.stack([load_pixels(item, (16, 16)) for item in as_items(images)[0]])
    model = keras_load(tuned["out"])
    features = keras.Model(model.inputs, model.get_layer("featx_features").output)
    expected = np.asarray(features([pixels.astype(np.float32) / 255.0], training=False))
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    # The classifier's probabilities are one cut away.
    probs = ImageEmbedder(tuned["out"], layer="featx_classifier").fit_transform(images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_fingerprint_is_the_file_sha256_and_saved_models_record_it(tuned, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from featx import FeatxModel

    digest = hashlib.sha256(tuned["out"].read_bytes()).hexdigest()
    embedder = ImageEmbedder(tuned["out"])
    assert embedder.fit(tuned["images"]).config_.source_id == f"sha256:{digest}"
    X = embedder.transform(tuned["images"])
    head = LogisticRegression(max_iter=500).fit(X, tuned["y"])
    saved = FeatxModel(embedder, head).save(tmp_path / "m.featx")
    manifest = read_manifest(saved)["embedder"]
    assert manifest["fingerprint"] == embedder.config_.fingerprint
    assert manifest["fingerprint_fields"]["backbone"] == f"file:sha256:{digest}"
    assert manifest["fingerprint_fields"]["layer"] == "featx_features"
    np.testing.assert_array_equal(load_model(saved).predict(tuned["images"]), head.predict(X))


def test_fine_tuned_features_separate_the_classes(tuned):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X = ImageEmbedder(tuned["out"]).fit_transform(tuned["images"])
    scores = cross_val_score(LogisticRegression(max_iter=1000), X, tuned["y"], cv=3)
    assert scores.mean() > 0.6  # three classes: chance is 1/3


def test_a_plain_model_file_is_embedded_as_before(backbone_file):
    assert read_tuned_metadata(backbone_file) is None
    config = ImageEmbedder(backbone_file).fit(np.zeros((1, 16, 16), np.uint8)).config_
    assert config.layer is None and config.preprocess == "none"


def test_early_stopping_keeps_the_best_epoch(backbone_file, tmp_path):
    """The saved weights are those of the epoch with the lowest validation loss."""
    import keras

    from featx.transfer.finetune_checks import validation_split_of

    images, y = striped_images(45, seed=1)
    seen: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(logs["val_loss"]))
    )
    out = fine_tune(images, y, out=tmp_path / "es.keras",
                    embedder=ImageEmbedder(backbone_file, preprocess="scale"), top_layers=6,
                    epochs=4, learning_rate=0.3, head_epochs=2,
                    validation_split=0.2, batch_size=8, patience=4, callbacks=[record])
    classes, labels = np.unique(y, return_inverse=True)
    _, val = validation_split_of(labels, classes, 0.2, 0)
    X = ImageEmbedder(out, layer="featx_classifier").fit_transform(images[val])
    loss = float(np.mean(-np.log(X[np.arange(len(val)), labels[val]])))
    assert len(seen) == 4
    assert loss == pytest.approx(min(seen), rel=1e-3)


def test_mobilenet_from_the_registry(imagenet_weights, tmp_path):
    """A registry backbone: its own preprocessing goes with the file, default top 15%."""
    images, y = striped_images(12)
    out = fine_tune(images, y, out=tmp_path / "mobilenet.keras",
                    embedder=ImageEmbedder("mobilenet", input_size=32), epochs=1, head_epochs=1,
                    validation_split=0.25)
    meta = read_tuned_metadata(out)
    assert meta is not None
    assert meta["preprocess"] == "keras.applications.mobilenet.preprocess_input"
    assert meta["training"]["unfrozen_from"] == "conv_pad_12"  # 13 of 85 layers
    X = ImageEmbedder(out).fit_transform(images)
    assert X.shape == (12, 1024)


def test_paths_stream_and_a_bad_file_is_named_before_training(backbone_file, tmp_path):
    from PIL import Image

    images, y = striped_images(12)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    paths[5].write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"1 of \d+ images.*/5\.png.*Nothing was trained"):
        fine_tune(paths, y, out=tmp_path / "t.keras", embedder=ImageEmbedder(backbone_file),
                  epochs=1,
                  validation_split=0.25)
    assert not (tmp_path / "t.keras").exists()


def test_an_interrupted_run_leaves_no_output(backbone_file, tmp_path):
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    images, y = striped_images(12)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(images, y, out=tmp_path / "t.keras", embedder=ImageEmbedder(backbone_file),
                  epochs=2,
                  head_epochs=1, validation_split=0, callbacks=[Stop()])
    assert list(tmp_path.iterdir()) == []


def test_augment_keeps_shapes_and_moves_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (16, 10, 10, 3)).astype(np.float32)
    out = augment_pixels(pixels, np.random.default_rng(1))
    assert out.shape == pixels.shape and out.dtype == pixels.dtype
    assert not np.array_equal(out, pixels)
    flat = np.full((2, 10, 10, 3), 7.0, np.float32)
    np.testing.assert_array_equal(augment_pixels(flat, np.random.default_rng(2)), flat)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "y", "error", "match"),
    [
        ({}, ["a"] * 30, ValueError, r"one class \('a'\).*at least 2 classes"),
        ({}, ["a"] * 29 + ["b"], ValueError,
         r"class 'b' has 1 image.*at least 2 of every class.*validation_split=0"),
        ({"validation_split": 0.05}, None, ValueError,
         r"holds 2 validation images for 3 classes.*validation_split >= 0\.10"),
        ({"top_layers": 7}, None, ValueError,
         r"top_layers=7 is beyond the network's depth.*6 layers.*from 1 to 6"),
        ({"top_layers": 1}, None, ValueError,
         r"top 1 layers \(relu2\) hold no weights.*Unfreeze more"),
        ({"from_layer": "conv_2"}, None, ValueError, r"from_layer='conv_2'.*did you mean 'conv2'"),
        ({"top_layers": 2, "from_layer": "conv2"}, None, ValueError, r"give one of them"),
        ({"out_name": "tuned.h5"}, None, ValueError, r"does not end in \.keras.*'tuned\.keras'"),
        ({"epochs": 0}, None, ValueError, r"epochs=0 is not valid; expected an integer >= 1"),
        ({"learning_rate": 2}, None, ValueError, r"learning_rate=2 is not valid"),
        ({"pooling": "none"}, None, ValueError, r"pooling='none' is not valid for fine-tuning"),
        ({"engine": "openvino"}, None, ValueError,
         r"trains with Keras; got an embedder with engine='openvino'.*ImageEmbedder\(out, "),
        ({"precision": "mixed_bfloat16"}, None, ValueError,
         r"trains in float32.*ImageEmbedder\(out, precision='mixed_bfloat16'\)"),
    ],
)
def test_bad_input_is_refused_with_the_fix(backbone_file, tmp_path, kwargs, y, error, match):
    images, default_y = striped_images(30)
    kwargs = dict(kwargs)
    out = tmp_path / kwargs.pop("out_name", "t.keras")
    embedder = ImageEmbedder(backbone_file, **{k: kwargs.pop(k) for k in ("pooling", "engine",
                                                                           "precision")
                                               if k in kwargs})
    with pytest.raises(error, match=match):
        fine_tune(images, default_y if y is None else y, out=out, embedder=embedder, **kwargs)
    assert not out.exists()


def test_labels_must_match_the_images(backbone_file, tmp_path):
    images, y = striped_images(12)
    with pytest.raises(ValueError, match="got 12 images but 11 labels"):
        fine_tune(images, y[:11], out=tmp_path / "t.keras", embedder=ImageEmbedder(backbone_file))


def test_a_backbone_with_no_trainable_layers(tmp_path):
    import keras

    inp = keras.Input((16, 16, 3))
    x = keras.layers.ReLU(name="relu")(inp)
    model = keras.Model(inp, keras.layers.MaxPooling2D(name="pool")(x))
    images, y = striped_images(30)
    with pytest.raises(FeatxError, match=r"no layer with weights that fine-tuning could train"):
        fine_tune(images, y, out=tmp_path / "t.keras", embedder=ImageEmbedder(model))


# ---- the command line and the JAX backend (subprocesses) ---------------------------------------


def _class_folder(root: Path, n: int) -> Path:
    from PIL import Image

    images, y = striped_images(n)
    for i, (img, label) in enumerate(zip(images, y, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i}.png")
    return root


def test_cli_finetune_then_embed(backbone_file, tmp_path):
    """``featx finetune`` then ``featx embed`` on its file, by ``main()`` in this process (the
    same text and exit codes as the console script; a killed run below is a real child)."""
    src = _class_folder(tmp_path / "photos", 24)
    out = tmp_path / "tuned.keras"
    run = featx_main("finetune", src, "--backbone", backbone_file, "--top-layers", "3",
                     "--epochs", "2", "--learning-rate", "0.01", "--augment", "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "epoch 1/2: loss " in run.stdout and f"wrote {out}" in run.stdout
    meta = read_tuned_metadata(out)
    assert meta is not None and meta["training"]["augment"] is True
    embedded = featx_main("embed", src, "--backbone", out, "--cache", tmp_path / "e.h5")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert "embedded 24, already cached 0, failed 0 of 24 images" in embedded.stdout
    bad = featx_main("finetune", src, "--backbone", backbone_file, "--top-layers", "99",
                     "--out", tmp_path / "bad.keras")
    assert bad.returncode == 1
    assert "featx: error: top_layers=99 is beyond the network's depth" in bad.stderr


def test_a_killed_run_leaves_the_previous_output_whole(backbone_file, tmp_path):
    """SIGKILL after the new file is written and synced, before it is renamed into place."""
    src = _class_folder(tmp_path / "photos", 30)
    out = tmp_path / "tuned.keras"
    out.write_bytes(b"the previous, complete output")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", FEATX_FAULT_INJECT="finetune.written")
    run = subprocess.run(
        [str(FEATX), "finetune", str(src), "--backbone", str(backbone_file), "--epochs", "1",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == -9, run.stderr[-3000:]
    assert out.read_bytes() == b"the previous, complete output"


def test_jax_backend(backbone_file, tmp_path):
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        from featx import ImageEmbedder
        from featx.transfer.finetune import fine_tune
        from featx.nets.tuned_file import read_tuned_metadata
        from tests.test_transfer_finetune import striped_images
        assert keras.backend.backend() == "jax"
        images, y = striped_images(30)
        out = fine_tune(images, y, out={str(tmp_path / 'jax.keras')!r},
                        embedder=ImageEmbedder({str(backbone_file)!r}, preprocess="scale"),
                        top_layers=3,
                        epochs=2, learning_rate=0.05, head_epochs=3, validation_split=0.2,
                        batch_size=8, augment=True, log=print)
        X = ImageEmbedder(out).fit_transform(images)
        print(json.dumps({{"shape": list(X.shape), "finite": bool(np.isfinite(X).all()),
                          "meta": read_tuned_metadata(out)}}))
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["shape"] == [30, 8] and result["finite"]
    assert result["meta"]["versions"]["backend"] == "jax"
    assert "epoch 2/2: loss " in run.stdout or "epoch 1/2: loss " in run.stdout
    with zipfile.ZipFile(tmp_path / "jax.keras") as zf:
        assert METADATA_NAME in zf.namelist()
