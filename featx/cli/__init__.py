"""The featx command: one module per subcommand."""

from __future__ import annotations

from featx.cli.main import main

__all__ = [
    "main",
]
