"""The fingerprint: the fields a cache group stores, encoded and decoded in one place.

A :class:`~featx.nets.backbones.BackboneConfig` decides the numbers an image turns into; the
cache files them under a group named by the digest of its :class:`Fingerprint`'s stored fields
(``docs/cache-format.md``). :meth:`Fingerprint.fields` writes those fields (their JSON, keys
sorted, is hashed into :attr:`Fingerprint.digest`), :meth:`Fingerprint.from_fields` reads them
back into named values. The stored form is featx's since 0.1 and must not change: a cache made
by an earlier featx stays valid (``tests/test_cache_legacy.py``).

Nothing here imports Keras.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DECODER_FORMATS", "EMBEDDING_FORMAT_VERSION", "Fingerprint"]

#: Version of the embedding format; part of every fingerprint. Bump it when a change in featx
#: (decoding, resizing, preprocessing) would change the numbers an unchanged backbone produces.
#: 2: JPEGs decoded by libjpeg-turbo's scaled decode and resized by OpenCV
#: (``featx.embed.jpeg``, ``decoder="fast"``). Format 1 is the Pillow path (``decoder="pillow"``),
#: kept as it was, so that caches made with it stay valid for it.
EMBEDDING_FORMAT_VERSION = 2

#: The embedding format each JPEG decoder gives (see :data:`EMBEDDING_FORMAT_VERSION`).
DECODER_FORMATS = {"pillow": 1, "fast": EMBEDDING_FORMAT_VERSION}


@dataclass(frozen=True)
class Fingerprint:
    """What decides the numbers an image turns into, as a cache group stores it.

    Attributes
    ----------
    format : int
        The embedding format (:data:`DECODER_FORMATS`: the JPEG decoder's).
    kind : {"registry", "file", "model", "builder", "hub"}
        Where the network comes from.
    source_id : str
        The registry name; a file's or model's ``"sha256:..."``; a function's qualified name; a
        Keras Hub preset's ``"<name>@keras-hub-<version>"`` or digest.
    weights_id : str
        The weights' identity (``"imagenet@keras-3.x"``, ``"random@seed0:<backend>"``, ...).
    layer : str, int or None
        The cut.
    pooling : str
        The pooling.
    input_size : (int, int) or None
        The size images are resized to (``None``: a non-image network).
    resize : str or None
        The resize policy; stored only with an input size.
    preprocess : str
        The preprocessing's name.
    precision : str
        ``"float32"``, ``"mixed_float16"``, ``"mixed_bfloat16"`` or ``"int8"``.
    engine : str or None
        The engine, where it changes the numbers: ``None`` in float32 (both engines give the
        same), else ``"keras"`` or ``"openvino"``.
    calibration_id : str
        The INT8 calibration set's digest (``""`` otherwise).

    Examples
    --------
    >>> fp = Fingerprint.from_fields({"format": 2, "backbone": "file:sha256:ab", "weights":
    ...     "in-file", "layer": None, "pooling": "avg", "input_size": [16, 16], "resize":
    ...     "resize", "preprocess": "none", "precision": "int8@openvino:c0ffee"})
    >>> fp.kind, fp.source_id, fp.precision, fp.engine, fp.calibration_id, fp.decoder
    ('file', 'sha256:ab', 'int8', 'openvino', 'c0ffee', 'fast')
    >>> Fingerprint.from_fields(fp.fields()) == fp
    True
    """

    format: int
    kind: str
    source_id: str
    weights_id: str
    layer: str | int | None
    pooling: str
    input_size: tuple[int, int] | None
    resize: str | None
    preprocess: str
    precision: str
    engine: str | None = None
    calibration_id: str = ""

    @property
    def decoder(self) -> str | None:
        """The JPEG decoder of :attr:`format` (``None`` for a format this featx does not know)."""
        return next((d for d, f in DECODER_FORMATS.items() if f == self.format), None)

    def fields(self) -> dict[str, Any]:
        """The fields as a cache group stores them (attribute ``fields``, JSON)."""
        return {
            "format": self.format,
            "backbone": self.source_id if self.kind == "registry"
            else f"{self.kind}:{self.source_id}",
            "weights": self.weights_id,
            "layer": self.layer,
            "pooling": self.pooling,
            "input_size": list(self.input_size) if self.input_size else None,
            "resize": self.resize,
            "preprocess": self.preprocess,
            "precision": self._stored_precision(),
        }

    def _stored_precision(self) -> str:
        """``"float32"``, ``"mixed_float16"`` (Keras unmarked), ``"mixed_bfloat16@openvino"``,
        ``"int8@openvino:<calibration>"``."""
        if self.engine in (None, "keras"):
            return self.precision
        calibration = f":{self.calibration_id}" if self.calibration_id else ""
        return f"{self.precision}@{self.engine}{calibration}"

    @property
    def digest(self) -> str:
        """A short hex digest of :meth:`fields`; names the cache group."""
        text = json.dumps(self.fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Fingerprint:
        """Read stored fields back (the inverse of :meth:`fields`)."""
        stored = str(fields.get("backbone", ""))
        kind, _, source_id = stored.partition(":") if ":" in stored else ("registry", "", stored)
        precision, _, ran_on = str(fields.get("precision", "float32")).partition("@")
        engine, _, calibration = ran_on.partition(":")
        size = fields.get("input_size")
        return cls(
            format=fields.get("format", 0), kind=kind, source_id=source_id,
            weights_id=str(fields.get("weights", "")), layer=fields.get("layer"),
            pooling=fields.get("pooling", "avg"),
            input_size=(int(size[0]), int(size[1])) if size else None,
            resize=fields.get("resize"), preprocess=str(fields.get("preprocess", "auto")),
            precision=precision,
            engine=engine or (None if precision == "float32" else "keras"),
            calibration_id=calibration,
        )
