#!/usr/bin/env bash
# Issue 13, item 4: the training-step speed of the SmolLM2-shaped InherNet against its teacher on one
# GPU — eager, torch.compile "default" and "reduce-overhead" (CUDA graphs), bf16 autocast — with
# benchmarks/bench_train_step.py (what is timed: its docstring; one AdamW step of the product's
# TextTaskModule on a fixed batch). Target: the InherNet's step <= 1.0 x the teacher's (2.3 x eager
# on an H100 before this work: 0.32 s against 0.14 s).
#
#   bash benchmarks/gpu_train_step.sh                # on the GPU machine (the device tool's `run`)
#   GPU_SMOKE=1 bash benchmarks/gpu_train_step.sh    # a tiny CPU setting that checks the script works
#                                                    # (1 block, 1 x 32 tokens, fp32; a few minutes on 2 cores)
#
# Writes into $OUT (default ./gpu_train_step_out):
#   train_step_llm.md / .json      SmolLM2-shaped, 30 blocks, GPU_BATCHES x 128 tokens per step
#   train_step_cnn.md / .json      resnet56 / InherNet-Large / resnet20 at batch GPU_CNN_BATCH (if time is left)
#   gpu_train_step.log             this script's output (nvidia-smi before and after included)
#
# Time: each piece runs under `timeout`, the whole script ends within GPU_TIME_LIMIT seconds
# (default 280: under 5 minutes). Compiling the 30-block Llama forward + backward takes about a
# minute per model and mode on the host CPU (an estimate: 2 models x 2 compiled modes = 4
# compilations), so the LLM piece runs first and the CNN piece only with the time that is left. A piece cut off by its timeout leaves its log lines but no table.
#
# Settings (environment):
#   GPU_TIME_LIMIT=280      seconds the whole script may take
#   GPU_BATCHES="32"        LLM sequences per step (x 128 tokens); more than one value: one run each
#   GPU_MODES="eager default reduce-overhead"   (smoke: "eager reduce-overhead")
#   GPU_CNN_MODES           the CNN piece's modes (default GPU_MODES; smoke: eager)
#   GPU_CNN_BATCH=256       images per CNN step
#   GPU_SMOKE=0             1: the tiny CPU setting (no GPU needed)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_train_step_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_train_step.log"
LIMIT="${GPU_TIME_LIMIT:-280}"
START=$(date +%s)
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

: > "$LOG"
if [ "${GPU_SMOKE:-0}" = "1" ]; then
  DEVICE=(--device cpu --threads 1)
  MODES="${GPU_MODES:-eager reduce-overhead}"
  CNN_MODES="${GPU_CNN_MODES:-eager}"
  LLM=(--llm-layers 1 --seq-len 32 --rounds 2 --warmup 2)
  BATCHES="${GPU_BATCHES:-1}"
  CNN=(--batch 4 --rounds 2 --warmup 1)
  log "GPU_SMOKE=1: tiny CPU setting (the numbers mean nothing; reduce-overhead compiles as default on a CPU;"
  log "the CNN piece eager only: compiling resnet56 takes minutes on a CPU)"
else
  DEVICE=(--device cuda --autocast bf16)
  MODES="${GPU_MODES:-eager default reduce-overhead}"
  LLM=(--llm-layers 30 --seq-len 128 --rounds 5 --warmup 3)
  BATCHES="${GPU_BATCHES:-32}"
  CNN_MODES="${GPU_CNN_MODES:-$MODES}"
  CNN=(--batch "${GPU_CNN_BATCH:-256}" --rounds 5 --warmup 3)
  nvidia-smi 2>&1 | tee -a "$LOG" || log "nvidia-smi not found"
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

for B in $BATCHES; do
  T=$(( $(left) - 20 ))
  if [ "$T" -lt 30 ]; then log "no time left for the LLM at batch $B"; break; fi
  log "LLM, batch $B x ${LLM[3]} tokens, modes: $MODES (timeout ${T}s)"
  timeout -k 10 "$T" $PY benchmarks/bench_train_step.py --parts llm "${DEVICE[@]}" "${LLM[@]}" --llm-batch "$B" \
      --modes $MODES --out "$OUT/train_step_llm_b$B.md" --json "$OUT/train_step_llm_b$B.json" 2>&1 | tee -a "$LOG"
  log "LLM batch $B: exit ${PIPESTATUS[0]}"
done

T=$(( $(left) - 10 ))
if [ "$T" -ge 40 ]; then
  log "CNN, modes: $CNN_MODES (timeout ${T}s)"
  timeout -k 5 "$T" $PY benchmarks/bench_train_step.py --parts cnn "${DEVICE[@]}" "${CNN[@]}" --modes $CNN_MODES \
      --out "$OUT/train_step_cnn.md" --json "$OUT/train_step_cnn.json" 2>&1 | tee -a "$LOG"
  log "CNN: exit ${PIPESTATUS[0]}"
else
  log "no time left for the CNN piece"
fi
[ "${GPU_SMOKE:-0}" = "1" ] || nvidia-smi 2>&1 | tee -a "$LOG" >/dev/null
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
