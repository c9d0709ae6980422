#!/usr/bin/env bash
# The one prepared GPU run (issues 16, 21): fits one device call, writes each stage's output to $OUT as the stage ends,
# so a timeout still leaves the earlier results. Stages, in order:
#   0. install the wheels the GPU image lacks (pydantic, datasets, trl, bitsandbytes) from .gpu/whl
#   1. preflight: versions, flex under autocast, the private Trainer members, a bitsandbytes NF4 round trip, the
#      imports of every later stage's script
#   2. correctness on CUDA: first-step ORPO loss of packed flex / packed varlen (flash-attn) / padded against TRL's
#      ORPOTrainer, fp32 and bf16; flex gradients; the dtypes each attention kernel receives (gpu_correctness.py)
#   3. the start-up kernel probe on the Qwen2.5-0.5B shape: its finding and gaps for flex in bf16 and fp32 (the
#      tolerances' check on a GPU), its seconds (first call with flex's compile, then warm) against a training step
#      (kernel_probe_cost.py)
#   4. speed against TRL side by side (orpo_bench.py --size gpu); compile time reported apart
#   5. QLoRA int4 peak memory against bf16 LoRA (gpu_checks.py, Llama-3.2-1B shape; through AutoTrainProject, so the
#      probe's line is in its log)
#   6. FSDP2 smoke (one process; LoRA, full fine-tune, DPO with --precompute-ref-logps and --sample-answers)
#
# Budget. A session has 15 minutes of device time, the machine's start (a few minutes) included: one call of at most
# BUDGET seconds (450 by default), leaving time for one rerun of the stages that need it (STAGES="3 5" runs only
# those). Each stage may run until its planned end (the sum of the budgets up to it): one that ends early leaves its
# time to the next, none eats into the stages after it, and one cut off at its end keeps its log. Seconds per stage:
#   0-install 20 | 1-preflight 45 | 2-correctness 60 | 3-probe 70 | 4-speed 175 | 5-qlora 50 | 6-fsdp2 30  = 450
#
# Prepare here (needs PyPI, not the device), from the repository root:
#     bash ../shared/gpu/prepare_carry.sh .         # writes .gpu/ (wheels for Python 3.12 + cu130), git-ignored
# then run it with the device tool:  run(command="bash bench/gpu_run.sh", carry=[".gpu"], timeout_s=480)
# Dry run on a machine without CUDA: PY=/path/to/venv/python OUT=/tmp/out bash bench/gpu_run.sh
#   (uses that interpreter's installed packages when .gpu/ is absent; runs the preflight, which imports every stage's
#   script, prints the budget and stops at stage 2 with one STOP line, exit 3).
set -o pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
PY=${PY:-python3}
BUDGET=${BUDGET:-450}  # seconds of the device call this script may use
STAGES=${STAGES:-1 2 3 4 5 6}
PLAN=(20 45 60 70 175 50 30)  # seconds per stage, 0 to 6 (the table above)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRL_EXPERIMENTAL_SILENCE=1 WANDB_MODE=disabled TORCH_LOGS=recompiles
mkdir -p "$OUT"
echo "budget: install ${PLAN[0]}, preflight ${PLAN[1]}, correctness ${PLAN[2]}, probe ${PLAN[3]}, speed ${PLAN[4]}," \
  "qlora ${PLAN[5]}, fsdp2 ${PLAN[6]} s = $(( ${PLAN[@]/%/+} 0 )) s planned, ${BUDGET} s at most; stages: ${STAGES}" \
  | tee -a "$OUT/summary.txt"
planned=${PLAN[0]}  # the planned end of the stages so far
stage() {  # stage N NAME COMMAND...: run until its planned end (capped by BUDGET); output to $OUT/NAME.log too
  local n=$1 name=$2; shift 2
  planned=$((planned + PLAN[n]))
  case " $STAGES " in *" $n "*) ;; *) return 0 ;; esac
  local end=$planned; [ "$end" -gt "$BUDGET" ] && end=$BUDGET
  local limit=$((end - SECONDS))
  if [ "$limit" -lt 10 ]; then echo "SKIP $name: ${limit}s left of its plan" | tee -a "$OUT/summary.txt"; return 0; fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local code=${PIPESTATUS[0]}
  grep -h '^RESULT\|^PREFLIGHT\|^STOP\|^|\|best ours\|compile\|start-up check\|^checked: ' "$OUT/$name.log" \
    >> "$OUT/summary.txt"
  echo "$name: exit $code after ${SECONDS}s (planned end ${end}s)" | tee -a "$OUT/summary.txt"
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
stage 1 1-preflight "$PY" bench/gpu_preflight.py

# 2.. need CUDA: one clear line and a clean stop without it
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "STOP: no CUDA device visible; stage 2 (correctness on CUDA) and the stages after it need one" \
    | tee -a "$OUT/summary.txt"
  exit 3
fi
stage 2 2-correctness "$PY" bench/gpu_correctness.py
stage 3 3-probe "$PY" bench/kernel_probe_cost.py --size gpu --steps 3
stage 4 4-speed "$PY" bench/orpo_bench.py --size gpu --steps 10
stage 5 5-qlora "$PY" bench/gpu_checks.py --out "$(dirname "$SITE")/checks" --only qlora --steps 10
stage 6 6-fsdp2 "$PY" bench/gpu_checks.py --out "$(dirname "$SITE")/checks" --only fsdp
echo "total ${SECONDS}s" | tee -a "$OUT/summary.txt"
