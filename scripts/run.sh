#!/usr/bin/env bash
# One entry point that does its own set-up on a fresh machine (Python 3.10+):
#   bash scripts/run.sh demo [args]   quick DyCON demo (prepare data, train, evaluate, infer) on the CPU
#   bash scripts/run.sh test [args]   the test suite (pytest on $DYCON_TEST_WORKERS workers, default 2; -n 0: one process)
#   bash scripts/run.sh setup         only create .venv and install the pinned dependencies (those of the tests)
# The virtual environment lives in .venv (override with DYCON_VENV). Nothing is downloaded at run time.
# setup / test also create .venv-zoo (override with DYCON_ZOO_VENV) when the model zoo's CI copy is present
# (../shared/tools/model-zoo, override with DYCON_MODEL_ZOO): a venv with ONLY the pins of the bundles'
# metadata.json, in which tests/bundles/test_zoo_ci.py runs the zoo's checks (the project is not installed there).
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

setup_zoo() {  # .venv-zoo: torch, then the union of ci/get_bundle_requirements.py of every bundle, nothing else
  local zoo="${DYCON_MODEL_ZOO:-$here/../shared/tools/model-zoo}"
  local zvenv="${DYCON_ZOO_VENV:-$here/.venv-zoo}"
  if [ ! -f "$zoo/ci/get_bundle_requirements.py" ]; then
    echo "[setup] no model-zoo copy at $zoo: no $zvenv (tests/bundles/test_zoo_ci.py will skip)" >&2
    return 0
  fi
  local stamp="$zvenv/.dycon-zoo-installed"
  local want
  want="$(cat bundles/*/configs/metadata.json scripts/run.sh "$zoo/ci/get_bundle_requirements.py" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  local tmp
  tmp="$(mktemp -d)"
  # the zoo's own script writes requirements_<bundle>.txt into the working directory (it imports monai: .venv runs it)
  for b in bundles/dycon_*/; do
    b="$(basename "$b")"
    (cd "$tmp" && "$venv/bin/python" "$zoo/ci/get_bundle_requirements.py" --b "$b" -p "$here/bundles" >/dev/null)
  done
  sort -u "$tmp"/requirements_*.txt > "$tmp/requirements.txt"
  local clash
  clash="$(cut -d= -f1 "$tmp/requirements.txt" | tr 'A-Z_' 'a-z-' | sort | uniq -d)"
  if [ -n "$clash" ]; then echo "[setup] bundles pin different versions of: $clash" >&2; exit 1; fi
  # the zoo CI's own tool, not a bundle requirement: verify_bundle.py's metadata check (monai.bundle.verify_metadata)
  # needs jsonschema, which the zoo CI takes from its requirements-dev.txt (the rest of that file is lint tools and
  # packages a bundle must declare itself, so it is left out: they would hide a missing pin)
  echo "jsonschema==4.26.0" >> "$tmp/requirements.txt"
  if [ -x "$zvenv/bin/python" ] && cmp -s "$tmp/requirements.txt" "$zvenv/requirements.txt"; then
    echo "$want" > "$stamp"; rm -rf "$tmp"; return 0
  fi
  echo "[setup] creating $zvenv with only the bundles' metadata pins (model-zoo checks; first run only)" >&2
  # a venv left by an earlier set of pins is rebuilt from scratch (pip would keep packages dropped from the pins)
  if [ -f "$zvenv/requirements.txt" ]; then rm -rf "$zvenv"; fi
  "$python" -m venv "$zvenv"
  "$zvenv/bin/python" -m pip install -q "torch==2.14.1" 2>&1 | grep -v "is ignored" || true
  "$zvenv/bin/python" -m pip install -q -r "$tmp/requirements.txt" 2>&1 | grep -v "is ignored" || true
  "$zvenv/bin/python" -c "import torch, monai, ignite" || { echo "[setup] $zvenv install failed" >&2; exit 1; }
  cp "$tmp/requirements.txt" "$zvenv/requirements.txt"
  echo "$want" > "$stamp"
  rm -rf "$tmp"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup "test,monailabel,lint"; setup_zoo ;;
  demo) setup test; exec "$venv/bin/python" -m custom demo "$@" ;;
  test) setup "test,monailabel,lint"; setup_zoo; export DYCON_ZOO_VENV="${DYCON_ZOO_VENV:-$here/.venv-zoo}"
        exec "$venv/bin/python" -m pytest -q -n "${DYCON_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  *) echo "usage: bash scripts/run.sh {demo|test|setup} [args]" >&2; exit 2 ;;
esac
