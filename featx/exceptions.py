"""Exceptions raised by featx. Each says what was received, what was expected and how to fix it."""

from __future__ import annotations

from typing import Any

__all__ = [
    "FeatxError",
    "UnknownBackboneError",
    "WeightsNotFoundError",
    "ImageLoadError",
    "CacheError",
    "CacheGroupError",
    "UntrustedModelError",
    "AdaptationError",
    "ModelVersionWarning",
]


class FeatxError(Exception):
    """Base class of every error featx raises on purpose."""


class UnknownBackboneError(FeatxError, ValueError):
    """A backbone name that is not in the registry, or a cut layer the model does not have."""


class WeightsNotFoundError(FeatxError, FileNotFoundError):
    """Pretrained weights are neither installed nor downloadable."""


class ImageLoadError(FeatxError, ValueError):
    """An image could not be read, decoded or converted.

    Attributes
    ----------
    index : int or None
        Position of the item in the input.
    source : str
        A printable name of the item (its path, or a description).
    reason : str
        What went wrong.
    retry_param : str or None
        For a failure remembered from an earlier run (not tried again), the parameter that
        tries it again (``"retry_failed"``); ``None`` otherwise. :meth:`describe` phrases the
        hint from it, so a command line can name its own option instead.
    """

    def __init__(self, source: str, reason: str, index: int | None = None, *,
                 retry_param: str | None = None):
        self.source = source
        self.reason = reason
        self.index = index
        self.retry_param = retry_param
        super().__init__(source, reason)

    def describe(self, retry_option: str | None = None) -> str:
        """The reason, and for a remembered failure how to try again.

        Parameters
        ----------
        retry_option : str, optional
            How to name the retry: by default the library parameter (``retry_failed=True``);
            a command line passes its option (``--retry-failed``).
        """
        if self.retry_param is None:
            return self.reason
        how = retry_option or f"{self.retry_param}=True"
        return f"{self.reason} (remembered from an earlier run; pass {how} to try again)"

    def __str__(self) -> str:
        # Built on demand: the position is often learnt after the error was raised.
        where = f"item {self.index} ({self.source})" if self.index is not None else self.source
        return f"{where}: {self.describe()}"


class CacheError(FeatxError, OSError):
    """The embedding cache file cannot be used as it is."""


class CacheGroupError(FeatxError, ValueError):
    """No single group of an embedding cache fits: the cache is empty, or the choice is open.

    Attributes
    ----------
    cache : str
        The cache file.
    groups : list of GroupInfo
        The cache's groups (most rows first); empty when it holds none.
    prefix : str or None
        The group prefix asked for, if any.
    """

    def __init__(self, message: str, *, cache: str, groups: list[Any], prefix: str | None = None):
        self.cache = cache
        self.groups = groups
        self.prefix = prefix
        super().__init__(message)


class UntrustedModelError(FeatxError, ValueError):
    """A saved model holds types featx does not trust to load; nothing in it was run.

    Attributes
    ----------
    types : list of str
        The fully qualified names of the types refused.
    """

    def __init__(self, message: str, types: list[str]):
        self.types = types
        super().__init__(message)


class AdaptationError(FeatxError, ValueError):
    """Domain adaptation cannot use the data given (widths differ, too few target rows, NaN)."""


class ModelVersionWarning(UserWarning):
    """A saved model was made with other versions of featx, scikit-learn or Keras."""
