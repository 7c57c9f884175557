#!/usr/bin/env bash
# The test command: set up, lint (ruff), type-check (mypy), check the layers (import-linter),
# then run the tests and doctests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
echo "==> ruff"
.venv/bin/ruff check featx tests benchmarks $( [ -d examples ] && echo examples )
echo "==> mypy"
.venv/bin/mypy
echo "==> import-linter (the layers of docs/architecture.md)"
.venv/bin/lint-imports --no-cache
echo "==> pytest"
set +e
.venv/bin/python -m pytest tests featx --doctest-modules -p no:cacheprovider \
    -n "${FEATX_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi
exit "$status"
