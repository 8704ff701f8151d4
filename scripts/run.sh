#!/usr/bin/env bash
# One entry point that does its own set-up on a fresh machine (Python 3.10+):
#   bash scripts/run.sh demo [args]   quick DyCON demo (prepare data, train, evaluate, infer) on the CPU
#   bash scripts/run.sh test [args]   the test suite (pytest)
#   bash scripts/run.sh setup         only create .venv and install the pinned dependencies (those of the tests)
# The virtual environment lives in .venv (override with DYCON_VENV). Nothing is downloaded at run time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${DYCON_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true PYTHONUNBUFFERED=1

setup() {  # setup EXTRAS: the project plus the given optional extras of pyproject.toml (once per set of extras)
  local extras="$1"
  stamp="$venv/.dycon-installed-${extras//,/-}"
  want="$(cat pyproject.toml scripts/run.sh | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "[setup] creating $venv and installing pinned dependencies [$extras] (first run only)" >&2
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  # torch first, pinned: a plain 'torch' requirement could pull another (multi-GB) build
  "$venv/bin/python" -m pip install -q "torch==2.14.1" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -m pip install -q -e ".[$extras]" 2>&1 | grep -v "is ignored" || true
  local check="import torch, monai, ignite, custom"
  if [[ ",$extras," == *",monailabel,"* ]]; then
    # MONAI Label: these two declare numpy<2 (directly or through numpymaxflow); their other requirements are the
    # 'monailabel' extra of pyproject.toml (see the comment there)
    "$venv/bin/python" -m pip install -q --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1" 2>&1 | grep -v "is ignored" || true
    check="$check, monailabel, pydicom_seg"
  fi
  "$venv/bin/python" -c "$check" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup "test,monailabel" ;;
  demo) setup test; exec "$venv/bin/python" -m custom demo "$@" ;;
  test) setup "test,monailabel"; exec "$venv/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash scripts/run.sh {demo|test|setup} [args]" >&2; exit 2 ;;
esac
