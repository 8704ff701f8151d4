#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one go: the training iteration at the LA bundle's default patch and
# batch (112x112x80, 4 labeled + 4 unlabeled, full UNet3D) in fp32 / bf16 / fp16, channels-last, no_grad vs
# inference_mode teacher and torch.compile, then sliding-window inference on an LA-sized volume.
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        (OUT_DIR default: runs/gpu_suite)
# Every command's JSON is appended to OUT_DIR/results.jsonl (one line per command) and its log to OUT_DIR/log.txt.
# A command that fails or runs over its limit is logged and skipped; the others still run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-runs/gpu_suite}"
mkdir -p "$out"
py="${PYTHON:-python3}"
R="${REPEATS:-20}"
W="${WARMUP:-5}"
DEV="${DEVICE:-cuda}"

bench() {  # bench LIMIT_S SCRIPT ARGS...: run one benchmark, keep its JSON on one line
  local limit="$1"; shift
  echo "=== $(date +%T) $*" | tee -a "$out/log.txt"
  if timeout "$limit" "$py" "$@" >"$out/one.json" 2>>"$out/log.txt"; then
    "$py" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" "$out/one.json" >>"$out/results.jsonl"
    "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); r=d.get('arms') or d.get('results'); \
print({k: (round(v['median_s'], 4), round(v.get('max_allocated_mib', 0))) for k, v in r.items()}, d.get('ratios_of_medians', ''))" \
      "$out/one.json" | tee -a "$out/log.txt"
  else
    echo "FAILED or timed out (rc=$?)" | tee -a "$out/log.txt"
  fi
  rm -f "$out/one.json"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/log.txt"
T=benchmarks/train_step.py
bench 240 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp off --arms dycon mean_teacher supervised released_loop
bench 150 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp bf16
bench 150 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp fp16
bench 90 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp bf16 --channels-last --arms dycon
bench 90 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp off --teacher-mode no_grad --arms dycon
bench 120 benchmarks/inference.py --device "$DEV" --bundle la --repeats 3 --warmup 1
bench 120 benchmarks/inference.py --device "$DEV" --bundle la --repeats 3 --warmup 1 --amp bf16
bench 240 $T --device "$DEV" --bundle la --repeats "$R" --warmup "$W" --amp bf16 --compile --arms dycon
