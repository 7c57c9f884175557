"""The saved model: an embedder's configuration and a fitted head in one file, loaded safely.

A ``.featx`` file is a zip archive of two members (``docs/saved-model.md``)::

    manifest.json   format version; featx, scikit-learn, Keras, NumPy and Python versions;
                    the embedder's parameters as plain JSON; the backbone's fingerprint; the
                    classes; the head's type and the sha256 of head.skops
    head.skops      the fitted head, written with skops (no pickle)

and, for a head that searches an index (:class:`~featx.heads.knn_index.IndexKNNClassifier`),
one ``index-<i>.bin`` member per index (``index-<i>.faiss`` in older files), written by the head's
``write_index`` (the inverted file on disk copied, or ``faiss.write_index`` for an exact index)
and stored uncompressed: streamed from and to a temporary file, never copied in memory (a
million rows of width 1,024 are a 2 GB index on disk; inside skops's bytes, saving the earlier
1 GB one in memory took 3-4 times that).

The network's weights are never stored: :func:`featx.load_model` rebuilds the backbone from its
configuration (a registry name with ImageNet or random weights, or the path of a model file),
and checks that it still resolves to the fingerprint the head was trained on.

Trust. Nothing in a file runs code unless the user trusted it explicitly. The manifest is JSON.
The head loads through ``skops.io.loads``, which builds only types on a trusted list: skops's
own defaults (scikit-learn estimators, NumPy and SciPy containers; no functions), the few
scikit-learn internals featx's preset heads hold (:data:`TRUSTED_TYPES`), and whatever the caller
passes as ``trusted=``. Any other type is refused, naming it, before anything is built. A model
file backbone is loaded with Keras's ``safe_mode`` (no Lambda code), whatever the embedder had
when saved, unless the caller passes ``safe_mode=False``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from featx._version import __version__
from featx.exceptions import FeatxError, ModelVersionWarning, UntrustedModelError

__all__ = [
    "MODEL_FORMAT_VERSION",
    "TRUSTED_TYPES",
    "describe_head",
    "plain",
    "read_manifest",
    "read_model",
    "write_model",
]

#: Version of the ``.featx`` file format. A file of a newer format is refused; an older one loads.
MODEL_FORMAT_VERSION = 1
_FORMAT_NAME = "featx-model"
_MANIFEST = "manifest.json"
_HEAD = "head.skops"
_INDEX_MEMBER = "index-{}.bin"  # "index-<i>.faiss" in files of earlier featx versions

#: scikit-learn internals that featx's preset heads hold and skops does not trust by default
#: (a test dumps every fitted preset and checks this list covers it).
TRUSTED_TYPES: tuple[str, ...] = (
    # featx's own domain adapters: plain estimators holding arrays and a head. Files written
    # before featx 0.2 name them by the package (featx.adapt.CORAL), later ones by the module.
    "featx.adapt.CORAL",
    "featx.adapt.SubspaceAlignment",
    "featx.adapt.adapters.CORAL",
    "featx.adapt.adapters.SubspaceAlignment",
    # The kNN head: in a .featx file its index is a member of its own; pickled (or in skops's
    # bytes by hand) the index is bytes (a uint8 array): faiss.serialize_index's, rebuilt by
    # faiss.deserialize_index, or the disk index's file, read as arrays; neither runs code.
    "featx.heads.knn_index.IndexKNNClassifier",
    # The heads that train by blocks: plain estimators holding a StandardScaler, an
    # SGDClassifier and (kernel="rbf") a kernel map, all arrays.
    "featx.heads.scalable.SGDHead",
    # The streaming gradient-boosting head: XGBoost's model as its UBJSON bytes (an array),
    # loaded by xgboost.Booster.load_model (data, no code).
    "featx.heads.boosted.BoostedHead",
    "featx.heads.kernel_map.RBFMap",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance32",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)

#: Embedder parameters that belong to the machine, not the model: not stored, reset on load.
_LOCAL_PARAMS = {"cache": None, "verbose": False}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "not installed"


def _versions() -> dict[str, str]:
    return {
        "featx": __version__,
        "scikit-learn": _version("scikit-learn"),
        "keras": _version("keras"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
    }


def _embedder_params(embedder: Any) -> dict[str, Any]:
    """The embedder's parameters as plain JSON; refuse what cannot be rebuilt from JSON."""
    params = dict(embedder.get_params(deep=False))
    backbone = params.get("backbone")
    if isinstance(backbone, os.PathLike):
        params["backbone"] = os.fspath(backbone)
    elif not isinstance(backbone, str):
        kind = "a keras.Model" if hasattr(backbone, "get_layer") else type(backbone).__name__
        raise FeatxError(
            f"the embedder's backbone is {kind}, which a saved model cannot store: it keeps the "
            "embedder's configuration, never weights or code. Save the network to a file "
            "(model.save('backbone.keras')) and use ImageEmbedder('backbone.keras', ...), or a "
            "registry name."
        )
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in _LOCAL_PARAMS:
            out[name] = _LOCAL_PARAMS[name]
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, tuple):
            value = list(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise FeatxError(
                f"the embedder's parameter {name}={value!r} is not plain data (a string, number, "
                "list or None), so a saved model cannot store it; pass a named option instead "
                "(e.g. preprocess='tf' rather than a function)."
            ) from None
        out[name] = value
    return out


def write_model(model: Any, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None
                ) -> Path:
    """Write a :class:`~featx.model.featx_model.FeatxModel` (its ``embedder``, ``head``,
    ``info``, ``classes_`` and ``has_proba``) as a ``.featx`` file; see
    :func:`featx.save_model`."""
    import skops.io as sio

    params = _embedder_params(model.embedder)
    config = model.embedder.backbone_config()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    indexes = {_INDEX_MEMBER.format(i): head for i, head in enumerate(_indexed_heads(model.head))}
    files = {name: tmp.with_name(f"{tmp.name}.{name}") for name in indexes}
    try:
        members = {}
        for name, head in indexes.items():
            head.write_index(files[name])
            members[name] = _sha256_file(files[name])
        with ExitStack() as detached:
            for name, head in indexes.items():
                detached.enter_context(head.index_detached(name))
            head_bytes = sio.dumps(model.head)
        _write_zip(model, out, tmp, params, config, head_bytes, info, members, files)
    finally:
        for file in files.values():
            file.unlink(missing_ok=True)
    return out


def _write_zip(model: Any, out: Path, tmp: Path, params: dict[str, Any], config: Any,
               head_bytes: bytes, info: dict[str, Any] | None, members: dict[str, str],
               files: dict[str, Path]) -> None:
    """The manifest, the head and the index files, zipped into ``tmp``, then renamed ``out``."""
    extra = {**model.info, **(info or {})}
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise FeatxError(f"info must be plain JSON data; {exc}.") from None
    manifest = {
        "format": _FORMAT_NAME,
        "format_version": MODEL_FORMAT_VERSION,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "embedder": {
            "class": "featx.ImageEmbedder",
            "params": params,
            "fingerprint": config.fingerprint,
            "fingerprint_fields": config.fingerprint_fields,
            "label": config.label,
        },
        "head": {
            "file": _HEAD,
            "type": describe_head(model.head),
            "sha256": hashlib.sha256(head_bytes).hexdigest(),
            "n_features_in": plain(getattr(model.head, "n_features_in_", None)),
            "has_proba": model.has_proba,
        },
        "classes": [plain(c) for c in model.classes_],
        "info": extra,
    }
    if members:
        manifest["members"] = members
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            zf.writestr(_HEAD, head_bytes)
            for name, file in files.items():
                zf.write(file, name, compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _indexed_heads(head: Any) -> list[Any]:
    """The :class:`~featx.heads.knn_index.IndexKNNClassifier` s a fitted head holds (itself, a
    pipeline's step, a meta-estimator's head), each once."""
    from featx.heads.knn_index import IndexKNNClassifier

    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if isinstance(obj, IndexKNNClassifier):
            if getattr(obj, "index_", None) is not None or hasattr(obj, "index_member_"):
                found.append(obj)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value, depth + 1)
        elif hasattr(obj, "get_params") and hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                walk(value, depth + 1)

    walk(head, 0)
    return found


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _attach_indexes(head: Any, zf: zipfile.ZipFile, manifest: dict[str, Any], file: Path
                    ) -> None:
    """Load each index member into the head that names it, checking its sha256 as it streams
    to a temporary file (faiss reads files)."""
    members = manifest.get("members") or {}
    for knn in _indexed_heads(head):
        name = getattr(knn, "index_member_", None)
        if name is None:
            continue  # a file written before indexes had members of their own: in the skops bytes
        if name not in members or name not in zf.namelist():
            raise FeatxError(f"{str(file)!r} has no {name} (the head's index); the file is "
                             "damaged.")
        fd, tmp_name = tempfile.mkstemp(suffix=".index")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as tmp, zf.open(name) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    tmp.write(block)
            if digest.hexdigest() != members[name]:
                raise FeatxError(f"{str(file)!r}: {name} does not match the sha256 in its "
                                 "manifest; the file is damaged or was altered.")
            knn.read_index(tmp_name)
        finally:
            os.unlink(tmp_name)
        del knn.index_member_


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.featx`` file's manifest (plain JSON; loads nothing else).

    Raises
    ------
    FeatxError
        If the file is missing, not a zip archive, or not a featx model.
    """
    file = Path(path)
    if not file.is_file():
        raise FeatxError(f"model file {str(file)!r} does not exist.")
    try:
        with zipfile.ZipFile(file) as zf:
            return _manifest(zf, file)
    except zipfile.BadZipFile:
        raise FeatxError(
            f"{str(file)!r} is not a featx model file (not a zip archive); expected a file "
            "written by featx.save_model or `featx heads`."
        ) from None


def _manifest(zf: zipfile.ZipFile, file: Path) -> dict[str, Any]:
    names = set(zf.namelist())
    if _MANIFEST not in names:
        raise FeatxError(
            f"{str(file)!r} is a zip archive but not a featx model (no {_MANIFEST}); expected a "
            "file written by featx.save_model or `featx heads`."
        )
    try:
        manifest = json.loads(zf.read(_MANIFEST).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatxError(f"{str(file)!r}: {_MANIFEST} is not valid JSON ({exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
        raise FeatxError(f"{str(file)!r} is not a featx model ({_MANIFEST} has no featx format).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise FeatxError(
            f"{str(file)!r} has model format {version!r}, written by a newer featx "
            f"({manifest.get('versions', {}).get('featx', '?')}); this featx "
            f"({_versions()['featx']}) reads format {MODEL_FORMAT_VERSION} and older. Upgrade "
            "featx."
        )
    return manifest


def read_model(
    path: str | os.PathLike[str],
    *,
    trusted: Sequence[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    safe_mode: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """Read a ``.featx`` file into its rebuilt embedder, its head and its manifest, running no
    code it holds; see :func:`featx.load_model`."""
    from featx.embed.embedder import ImageEmbedder

    file = Path(path)
    manifest = read_manifest(file)
    _warn_versions(manifest, file)
    with zipfile.ZipFile(file) as zf:
        head_name = manifest.get("head", {}).get("file", _HEAD)
        if head_name not in zf.namelist():
            raise FeatxError(f"{str(file)!r} has no {head_name}; the file is damaged.")
        head_bytes = zf.read(head_name)
        head = _trusted_head(head_bytes, head_name, manifest, file, trusted)
        _attach_indexes(head, zf, manifest, file)
    stored = dict(manifest["embedder"]["params"])
    known = set(ImageEmbedder().get_params(deep=False))
    unknown = sorted(set(stored) - known)
    if unknown:
        warnings.warn(
            f"{str(file)!r} sets embedder parameters this featx does not have: {unknown}; they "
            "are ignored.",
            ModelVersionWarning,
            stacklevel=2,
        )
    params = {k: v for k, v in stored.items() if k in known}
    if isinstance(params.get("input_size"), list):
        params["input_size"] = tuple(params["input_size"])
    params["backbone"] = _locate(params.get("backbone"), file)
    if isinstance(params.get("weights"), str) and params["weights"] != "imagenet":
        params["weights"] = _locate(params["weights"], file)
    params.update(_LOCAL_PARAMS)
    params["cache"] = cache
    if "safe_mode" in known:
        params["safe_mode"] = bool(safe_mode)
    embedder = ImageEmbedder(**params)
    _check_backbone(embedder, manifest, file)
    return embedder, head, manifest


def _trusted_head(head_bytes: bytes, head_name: str, manifest: dict[str, Any], file: Path,
                  trusted: Sequence[str] | None) -> Any:
    """The head, loaded by skops once its bytes match the manifest and hold trusted types only."""
    import skops.io as sio

    expected = manifest["head"].get("sha256")
    if expected and hashlib.sha256(head_bytes).hexdigest() != expected:
        raise FeatxError(
            f"{str(file)!r}: {head_name} does not match the sha256 in its manifest; the file is "
            "damaged or was altered."
        )
    try:
        found = sio.get_untrusted_types(data=head_bytes)
    except Exception as exc:
        raise FeatxError(f"{str(file)!r}: {head_name} cannot be read by skops ({exc}).") from None
    allowed = set(TRUSTED_TYPES) | set(trusted or ())
    refused = sorted(t for t in found if t not in allowed)
    if refused:
        raise UntrustedModelError(
            f"{str(file)!r} holds types featx does not trust: {', '.join(refused)}. Nothing was "
            "loaded. If you trust where the file came from, pass "
            f"load_model(..., trusted={refused!r}) (featx predict: "
            + " ".join(f"--trust {t}" for t in refused) + ").",
            refused,
        )
    return sio.loads(head_bytes, trusted=list(found))


def _locate(value: Any, file: Path) -> Any:
    """A relative path that is missing from here but present beside the model file."""
    if not isinstance(value, str) or os.path.isabs(value):
        return value
    if Path(value).exists() or not (file.parent / value).exists():
        return value
    return str(file.parent / value)


def _warn_versions(manifest: dict[str, Any], file: Path) -> None:
    saved = manifest.get("versions", {})
    now = _versions()
    differ = [
        f"{name} {saved.get(name, '?')} (now {now[name]})"
        for name in ("featx", "scikit-learn", "keras")
        if saved.get(name) != now[name]
    ]
    if differ:
        warnings.warn(
            f"{str(file)!r} was made with {', '.join(differ)}. It loads, but a head or a "
            "backbone may behave differently across versions; check its predictions, or "
            "retrain with these versions.",
            ModelVersionWarning,
            stacklevel=3,
        )


def _check_backbone(embedder: Any, manifest: dict[str, Any], file: Path) -> None:
    """The rebuilt embedder must resolve to the embedding space the head was trained on."""
    try:
        config = embedder.backbone_config()
    except FeatxError as exc:
        raise type(exc)(
            f"the backbone of model {str(file)!r} cannot be resolved here: {exc}"
        ) from None
    before = dict(manifest["embedder"].get("fingerprint_fields") or {})
    now = config.fingerprint_fields
    changed = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if a == b or key == "format":
            continue
        if key == "weights" and all(str(v).startswith("imagenet@") for v in (a, b)):
            continue  # the same ImageNet weights through another Keras; the versions warn
        changed.append(f"{key}: {a!r} when saved, {b!r} now")
    if changed:
        raise FeatxError(
            f"the backbone of model {str(file)!r} no longer gives the embeddings its head was "
            f"trained on ({'; '.join(changed)}). Restore the original backbone file, or retrain."
        )
    if before.get("format") != now.get("format"):
        warnings.warn(
            f"{str(file)!r} was made with featx embedding format {before.get('format')}; this "
            f"featx embeds with format {now.get('format')}, so its embeddings differ slightly.",
            ModelVersionWarning,
            stacklevel=3,
        )


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (JSON- and CSV-friendly)."""
    return value.item() if isinstance(value, np.generic) else value


def describe_head(head: Any) -> str:
    """The head's type, or a pipeline's steps: ``Pipeline(StandardScaler, SVC)``."""
    steps = getattr(head, "steps", None)
    if steps:
        return f"Pipeline({', '.join(type(s).__name__ for _, s in steps)})"
    return type(head).__name__
