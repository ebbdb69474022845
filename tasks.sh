#!/usr/bin/env bash
# The two set-up commands of the README:
#   bash tasks.sh demo   runs every notebook end to end (papermill) on the synthetic demo data
#   bash tasks.sh test   runs the test suite, notebooks included (nbval, ci profile)
# Each creates .venv with Python 3.11 and installs the package into it on first use.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${ICECORE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_env() {
  if [ ! -x "$VENV/bin/icecore" ] || [ pyproject.toml -nt "$VENV/.icecore-installed" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # Pinned for local set-up (a CPU machine takes these from its wheel cache); Colab keeps its own torch.
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    touch "$VENV/.icecore-installed"
  fi
}

case "${1:-}" in
  demo)
    ensure_env
    shift
    exec "$VENV/bin/icecore" run --profile demo "$@"
    ;;
  test)
    ensure_env
    shift
    exec "$VENV/bin/python" -m pytest tests notebooks --nbval-lax \
      --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=10 "$@"
    ;;
  *)
    echo "usage: bash tasks.sh demo|test [extra arguments]" >&2
    exit 2
    ;;
esac
