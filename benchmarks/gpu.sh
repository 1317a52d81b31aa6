#!/usr/bin/env bash
# The pixelfold benchmark suite on CUDA: float32 and bfloat16, every case in NCHW and channels_last,
# torch.backends.cudnn.benchmark on, timings synchronised by torch.utils.benchmark (tune group without
# torch.compile: compiling 5 models would not fit), including the issue-12 groups: sweep (polyphase blocks),
# patch_embed (conv vs PatchLinear vs F.linear), limit (every rearrangement vs the hand-written permute;
# float32 only). Each dtype is capped by a timeout: at most ~4.5 minutes in all.
#
#   benchmarks/gpu.sh [--dry-run] [OUT_DIR]   OUT_DIR defaults to $OUT if set, else benchmarks/results
#
# --dry-run: no GPU needed: the same commands on the CPU in --quick mode with 1 round, into OUT_DIR/dry-run
# (checks the script end to end before a device is spent on it).
#
# Writes OUT_DIR/cuda.{md,json,png} (float32), OUT_DIR/cuda-bf16.{md,json,png}, the logs, and gpu.txt
# (torch.cuda.get_device_name and nvidia-smi). The card's name is also in the header of each table.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
# Per dtype: 3 interleaved rounds of 0.05 s per form keep the suite well under the 5-minute budget.
ROUNDS="${BENCH_ROUNDS:-3}"
MIN_RUN_TIME="${BENCH_MIN_RUN_TIME:-0.05}"
LIMIT_S="${BENCH_LIMIT_S:-150}"
DEVICE=cuda
EXTRA=()
if [ "$DRY" -eq 1 ]; then
    OUT_DIR="$OUT_DIR/dry-run" DEVICE=cpu ROUNDS=1 MIN_RUN_TIME=0.005 EXTRA=(--quick)
    LIMIT_S="${BENCH_LIMIT_S:-400}"  # a loaded 2-core CPU needs ~3 min per dtype for the quick groups
fi
mkdir -p "$OUT_DIR"

if [ "$DRY" -eq 1 ]; then
    echo "dry run on the CPU (no CUDA probe)" > "$OUT_DIR/gpu.txt"
else
"$PYTHON" - > "$OUT_DIR/gpu.txt" <<'PY' || { cat "$OUT_DIR/gpu.txt"; echo "gpu.sh: no usable CUDA device" >&2; exit 2; }
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("device:", torch.cuda.get_device_name(0))
print("capability:", torch.cuda.get_device_capability(0))
print("torch:", torch.__version__, "CUDA:", torch.version.cuda, "cuDNN:", torch.backends.cudnn.version())
PY
nvidia-smi >> "$OUT_DIR/gpu.txt" 2>&1 || true
fi
cat "$OUT_DIR/gpu.txt"

status=0
# every group in float32; bfloat16 without the 84 limit cases (the same copies at half the bytes)
if [ "$DRY" -eq 1 ]; then  # the --quick groups only (the tune group tunes whole models even when quick)
    ALL_GROUPS=$("$PYTHON" -m pixelfold.bench --list | awk '$2 == "(quick)" {print $1}')
else
    ALL_GROUPS=$("$PYTHON" -m pixelfold.bench --list | awk '{print $1}')
fi
for dtype in float32 bfloat16; do
    log="$OUT_DIR/$DEVICE-$dtype.log"
    echo "== $dtype ==" | tee "$log"
    if [ "$dtype" = float32 ]; then groups=$ALL_GROUPS; else groups=$(echo "$ALL_GROUPS" | grep -vx limit); fi
    # shellcheck disable=SC2086
    timeout "$LIMIT_S" "$PYTHON" -m pixelfold.bench --device "$DEVICE" --dtype "$dtype" --rounds "$ROUNDS" \
        --min-run-time "$MIN_RUN_TIME" --no-compile --out "$OUT_DIR" --cases $groups "${EXTRA[@]}" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "gpu.sh: $dtype run exited with $rc (124 = over ${LIMIT_S}s)" | tee -a "$log" >&2
        status=$rc
    fi
done
ls -l "$OUT_DIR"
exit $status
