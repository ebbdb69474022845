#!/usr/bin/env bash
# The two set-up commands of the README:
#   bash tasks.sh demo   runs every notebook end to end (papermill) on the synthetic demo data
#   bash tasks.sh test   runs the test suite, notebooks included (nbval, ci profile); `test-slow` the slow rest
# Each creates .venv with Python 3.11 and installs the package into it on first use.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${ICECORE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_env() {
  if [ ! -x "$VENV/bin/icecore" ] || [ pyproject.toml -nt "$VENV/.icecore-installed" ]; then
    "$PYTHON" -m venv "$VENV"
    # uv installs the same wheels as pip in a quarter of the time (parallel downloads and unpacking: 30 s against
    # 107 s on 2 cores); torch is pinned for local set-up, Colab keeps its own.
    "$VENV/bin/python" -m pip install --quiet uv
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
    touch "$VENV/.icecore-installed"
  fi
}

# The browser tests (tests/test_browser.py) drive Debian's chromium; installed here when missing and apt can.
ensure_chromium() {
  if command -v chromium >/dev/null || [ -n "${CHROMIUM:-}" ]; then
    return
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null; then
    $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
      || echo "could not install chromium (apt-get install chromium); the browser tests will skip or fail" >&2
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
    # Side by side, one core each: the notebooks under nbval (ci profile, in order: each continues the run the one
    # before it started; their log follows the unit tests') and the unit tests but the slow ones (test-slow).
    log="$(mktemp)"
    OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest notebooks --nbval-lax \
      --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider >"$log" 2>&1 &
    notebooks=$!
    units=0
    OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest tests -m "not slow" --durations=5 "$@" || units=$?
    nbval=0
    wait "$notebooks" || nbval=$?
    echo "---- notebooks (nbval, ci profile) ----"
    cat "$log"
    rm -f "$log"
    exit $(( units || nbval ))
    ;;
  test-slow)
    ensure_env
    ensure_chromium
    shift
    exec "$VENV/bin/python" -m pytest tests -m slow --durations=5 "$@"
    ;;
  *)
    echo "usage: bash tasks.sh demo|test|test-slow [extra arguments]" >&2
    exit 2
    ;;
esac
