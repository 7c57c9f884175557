"""The fine-tuned backbone file: a Keras ``.keras`` zip with one more member, ``featx.json``.

:func:`featx.fine_tune` writes it; :func:`featx.nets.backbones.resolve_backbone` reads it, so that
``ImageEmbedder("tuned.keras")`` embeds with the preprocessing the network was trained with, cut
by default at the layer that feeds its classifier. Keras ignores the extra member, so the file
loads in Keras's safe mode like any other; featx reads it without importing Keras. Its keys:

``format``            this content's version (:data:`METADATA_FORMAT`)
``features_layer``    the layer that feeds the classifier: the default cut
``classifier_layer``  the softmax classifier trained with it
``preprocess``        the preprocessing mode the network was trained with (featx's name for it)
``input_size``        ``[height, width]``; ``resize``: the resize policy
``classes``           the classifier's classes, in output order
``source``            the backbone it started from (label and fingerprint)
``training``          what was unfrozen, epochs run, learning rate, sizes, best validation
                      accuracy, seconds
``versions``          Keras and its backend
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from featx._faults import fault_point
from featx.exceptions import FeatxError

__all__ = ["METADATA_NAME", "METADATA_FORMAT", "read_tuned_metadata", "save_tuned_model"]

#: The zip member of a fine-tuned ``.keras`` file that holds what featx needs to embed from it.
METADATA_NAME = "featx.json"
#: Version of :data:`METADATA_NAME`'s content.
METADATA_FORMAT = 1


def read_tuned_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The featx metadata of a ``.keras`` file written by :func:`featx.fine_tune`; ``None`` for any
    other model file. Reads one zip member; imports nothing heavy.

    Examples
    --------
    >>> read_tuned_metadata(__file__) is None  # not a zip archive
    True
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if METADATA_NAME not in zf.namelist():
                return None
            meta: dict[str, Any] = json.loads(zf.read(METADATA_NAME))
    except (zipfile.BadZipFile, OSError):
        return None
    except ValueError as exc:
        raise FeatxError(
            f"{str(path)!r} holds a {METADATA_NAME} that is not valid JSON ({exc}); the file was "
            "changed after featx.fine_tune wrote it. Fine-tune again to get a sound file."
        ) from None
    if not isinstance(meta, dict) or int(meta.get("format", 0)) > METADATA_FORMAT:
        raise FeatxError(
            f"{str(path)!r} was written by a newer featx ({METADATA_NAME} format "
            f"{meta.get('format') if isinstance(meta, dict) else '?'}; this featx reads format "
            f"{METADATA_FORMAT}). Upgrade featx."
        )
    return meta


def save_tuned_model(model: Any, metadata: dict[str, Any], target: Path) -> None:
    """Save ``model`` with ``metadata`` as ``target`` (a ``.keras`` file), atomically.

    The model is saved to a temporary ``.keras`` file beside ``target``, the metadata is added
    as the zip member :data:`METADATA_NAME`, the file is synced and renamed into place: a run
    interrupted at any point leaves ``target`` as it was (absent, or the previous complete file).
    """
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(METADATA_NAME, json.dumps(metadata, indent=1, sort_keys=True))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fault_point("finetune.written")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
