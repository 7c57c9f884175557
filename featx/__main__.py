"""``python -m featx``: the same as the ``featx`` command."""

from __future__ import annotations

from featx.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
