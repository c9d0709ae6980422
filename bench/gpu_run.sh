#!/usr/bin/env bash
# The one prepared GPU run (issue 16): fits one 10-minute device call, writes each stage's output to $OUT as the
# stage ends, so a timeout still leaves the earlier results. Stages, in order:
#   0. install the wheels the GPU image lacks (pydantic, datasets, trl, bitsandbytes) from .gpu/whl
#   1. preflight: versions, flex under autocast, the private Trainer members, a bitsandbytes NF4 round trip
#   2. correctness on CUDA: first-step ORPO loss of packed flex / packed varlen (flash-attn) / padded against TRL's
#      ORPOTrainer, fp32 and bf16; flex gradients; the dtypes each attention kernel receives (gpu_correctness.py)
#   3. speed against TRL side by side (orpo_bench.py --size gpu); compile time reported apart
#   4. QLoRA int4 peak memory against bf16 LoRA (gpu_checks.py, Llama-3.2-1B shape)
#   5. FSDP2 smoke (one process; LoRA, full fine-tune, DPO with --precompute-ref-logps and --sample-answers)
#
# Prepare here (needs PyPI, not the device), from the repository root:
#     bash ../shared/gpu/prepare_carry.sh .         # writes .gpu/ (wheels for Python 3.12 + cu130), git-ignored
# then run it with the device tool:  run(command="bash bench/gpu_run.sh", carry=[".gpu"], timeout_s=600)
# Dry run on a machine without CUDA: PY=/path/to/venv/python OUT=/tmp/out bash bench/gpu_run.sh
#   (uses that interpreter's installed packages when .gpu/ is absent; stops at stage 2 with one STOP line).
set -o pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
PY=${PY:-python3}
BUDGET=${BUDGET:-570}  # seconds of the call's 600 this script may use; each stage gets what is left, capped
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRL_EXPERIMENTAL_SILENCE=1 WANDB_MODE=disabled TORCH_LOGS=recompiles
mkdir -p "$OUT"
left() { echo $((BUDGET - SECONDS)); }
stage() {  # stage NAME CAP COMMAND...: run with min(CAP, time left), output to the console and $OUT/NAME.log
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left); [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt 20 ]; then echo "SKIP $name: ${limit}s left" | tee -a "$OUT/summary.txt"; return 0; fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local code=${PIPESTATUS[0]}
  grep -h '^RESULT\|^PREFLIGHT\|^STOP\|^|\|best ours\|compile' "$OUT/$name.log" >> "$OUT/summary.txt"
  echo "$name: exit $code after ${SECONDS}s" | tee -a "$OUT/summary.txt"
  return "$code"
}

# 0. packages
SITE=$(mktemp -d)/site
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/whl/*.whl 2>&1 \
    | tail -3 | tee "$OUT/install.log"
elif ! "$PY" -c "import pydantic, datasets, trl" 2>/dev/null; then
  echo "STOP: .gpu/whl is missing and $PY lacks pydantic/datasets/trl: run bash ../shared/gpu/prepare_carry.sh . and carry .gpu" \
    | tee "$OUT/summary.txt"
  exit 2
fi
export PYTHONPATH=$SITE:$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}

# 1. preflight (runs without CUDA too: it says so in its device line)
stage 1-preflight 120 "$PY" bench/gpu_preflight.py

# 2.. need CUDA: one clear line and a clean stop without it
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "STOP: no CUDA device visible; stage 2 (correctness on CUDA) and the stages after it need one" \
    | tee -a "$OUT/summary.txt"
  exit 3
fi
stage 2-correctness 150 "$PY" bench/gpu_correctness.py
stage 3-speed 300 "$PY" bench/orpo_bench.py --size gpu --steps 10
stage 4-qlora 150 "$PY" bench/gpu_checks.py --out "$(dirname "$SITE")/checks" --only qlora --steps 10
stage 5-fsdp2 120 "$PY" bench/gpu_checks.py --out "$(dirname "$SITE")/checks" --only fsdp
echo "total ${SECONDS}s" | tee -a "$OUT/summary.txt"
