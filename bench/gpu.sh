#!/usr/bin/env bash
# The speed benchmarks on a GPU machine, one log per benchmark in LOG_DIR (default bench-logs/):
#   bash bench/gpu.sh [LOG_DIR [NAME ...]]     NAME: train bdt scale umap (default: all, in that order)
# Each benchmark runs under its own time limit, so one that fails or hangs does not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${1:-bench-logs}"
shift || true
SELECTED=" ${*:-train bdt scale umap} "
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

run() {  # run NAME LIMIT_S COMMAND...: time-limited, logged, its exit status noted (skipped unless selected)
  local name="$1" limit="$2"
  shift 2
  [[ "$SELECTED" == *" $name "* ]] || return 0
  echo "== $name: $*"
  timeout "$limit" "$@" >"$LOG_DIR/$name.log" 2>&1
  echo "== $name exit $?"
  grep -v "it/s\]\|s/it\]" "$LOG_DIR/$name.log" | tail -25
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, xgboost; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'xgboost', xgboost.__version__)"
run train 230 python3 bench/train.py --device cuda --image-size 64 --batch-size 512 --steps 40 --repeats 3
run bdt 90 python3 bench/bdt.py
run scale 200 python3 bench/scale.py --n 1000000 --classify-rows 1000000 --batch-size 1024
run umap 260 python3 bench/umap.py --device cuda --threads 16  # numba's first compile alone takes minutes
