#!/usr/bin/env bash
# Set up the project's virtual environment (idempotent).
#   scripts/setup.sh          the app and its models
#   scripts/setup.sh test     + test tools, PostgreSQL and Chromium (Debian packages)
#   scripts/setup.sh bench    + the peers the benchmarks compare against
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-run}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.installed-$what-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: 2.13.0 resolves to the CPU build here (an unpinned torch pulls CUDA).
  python -m pip install -q "torch==2.13.0"
  case "$what" in
    run)   python -m pip install -q -e . ;;
    test)  python -m pip install -q -e ".[test]" ;;
    bench) python -m pip install -q -e ".[test,bench]" ;;
    *) echo "usage: scripts/setup.sh [run|test|bench]" >&2; exit 2 ;;
  esac
  touch "$stamp"
fi
if [ "$what" = test ] || [ "$what" = bench ]; then
  bash scripts/install_browser.sh
  bash scripts/postgres.sh start
fi
