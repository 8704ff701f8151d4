#!/usr/bin/env bash
# The CPU training-speed figures of benchmarks/README.md ("CPU training speed") in one go, side by side: the issue's
# configuration (patch 64x64x48, 2 labeled + 2 unlabeled, the full 6.15 M-parameter UNet3D, 2 threads), first with
# the code before the speed work (BEFORE: a checkout of it, e.g. `git worktree add /tmp/before 14d46be`; its
# released_loop arm is the stand-in for the authors' iteration), then this checkout in fp32 and bf16, with glibc's
# default allocator and custom.allocator.retain_freed_memory, contiguous and channels-last, and the per-phase
# profiles (torch.profiler) of the fp32 and the fastest setting.
#   BEFORE=/tmp/before bash benchmarks/cpu_suite.sh [OUT_DIR]   (OUT_DIR default: runs/cpu_suite; two idle cores)
# Every command's JSON is appended to OUT_DIR/results.jsonl and its log to OUT_DIR/log.txt; a command that fails or
# runs over its limit is logged and skipped. Environment: PYTHON (default .venv/bin/python), REPEATS (5),
# WARMUP (2), THREADS (2), PATCH ("64 64 48"), COMPILE (0; 1 adds a torch.compile row: slower here, 2.6 vs 1.6 s).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="$(realpath -m -s "${1:-runs/cpu_suite}")"
mkdir -p "$out"
py="$(realpath -s "${PYTHON:-.venv/bin/python}")"
R="${REPEATS:-5}"
W="${WARMUP:-2}"
T="${THREADS:-2}"
P="${PATCH:-64 64 48}"

bench() {  # bench LIMIT_S [--before] ARGS...: one train_step.py run, its JSON kept on one line
  local limit="$1"; shift
  local dir="$PWD" tag="after"
  if [ "$1" = "--before" ]; then shift; dir="$BEFORE"; tag="before"; fi
  echo "=== $(date +%T) [$tag] train_step.py $*" | tee -a "$out/log.txt"
  if (cd "$dir" && timeout "$limit" "$py" benchmarks/train_step.py "$@") >"$out/one.json" 2>>"$out/log.txt"; then
    "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); d['code']=sys.argv[2]; print(json.dumps(d))" \
      "$out/one.json" "$tag" >>"$out/results.jsonl"
    "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); \
print({k: (round(v['median_s'], 3), round(v['peak_rss_mib'])) for k, v in d['arms'].items()}, d['ratios_of_medians'])" \
      "$out/one.json" | tee -a "$out/log.txt"
  else
    echo "FAILED or timed out (rc=$?)" | tee -a "$out/log.txt"
  fi
  rm -f "$out/one.json"
}

grep -m1 'model name' /proc/cpuinfo | tee -a "$out/log.txt"
uptime | tee -a "$out/log.txt"
C="--bundle la --patch $P --labeled 2 --unlabeled 2 --repeats $R --warmup $W --threads $T"
# shellcheck disable=SC2086
{
if [ -n "${BEFORE:-}" ]; then
  bench 900 --before $C --amp off --arms dycon mean_teacher supervised released_loop
  bench 600 --before $C --amp bf16 --arms dycon mean_teacher
fi
bench 900 $C --amp off --arms dycon mean_teacher supervised
bench 600 $C --amp off --allocator retain --arms dycon mean_teacher
bench 600 $C --amp off --allocator retain --channels-last --arms dycon
bench 600 $C --amp bf16 --allocator retain --arms dycon mean_teacher
bench 600 $C --amp bf16 --allocator retain --channels-last --arms dycon mean_teacher supervised   # the bundles' CPU default
if [ "${COMPILE:-0}" = 1 ]; then
  bench 1200 $C --amp bf16 --allocator retain --channels-last --compile --arms dycon
fi
bench 600 $C --amp off --allocator retain --profile --arms dycon
bench 600 $C --amp bf16 --allocator retain --channels-last --profile --arms dycon
}
uptime | tee -a "$out/log.txt"
