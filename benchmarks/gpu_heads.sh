#!/usr/bin/env bash
# Issue 11, item 5: the paper-scale comparison of both CNN pairs on one GPU, in pieces that each fit
# into one call of the device tool (10 minutes at most), resuming where the last piece stopped.
#
#   bash benchmarks/gpu_heads.sh                  # on the GPU machine (the device tool's `run`)
#   GPU_SMOKE=1 bash benchmarks/gpu_heads.sh      # the tiny CPU smoke test (about 2-3 minutes on 2 cores;
#                                                 # not part of the test suite)
#
# The setting: benchmarks/configs/gpu60k_resnet56_resnet20.yaml and gpu60k_wrn_40_2_wrn_40_1.yaml —
# all 58,800 Fashion-MNIST training images for the teacher and every method, 60 epochs each, the full
# test set, 3 seeds, bf16-mixed, channels_last, data and augmentation on the GPU, batch 128, lr 0.1.
#
# What it does: prints nvidia-smi; starts GPU_PROCS processes of `inhernet compare` per config (all
# on the one GPU; they share the runs through the runner's lock files: one trains a config's teacher
# while the others wait for it, then each takes the next run nobody holds); waits; at
# GPU_TIME_LIMIT - GPU_REPORT_RESERVE seconds sends them SIGTERM (each stops at the end of its batch
# and keeps the checkpoint of its last finished epoch; SIGKILL after GPU_GRACE more seconds); runs
# `inhernet report --no-latency` for both out_dirs; says how far every run is; and writes into $OUT:
#   <config name>/results.md, <config name>/results.json   the tables so far (once a teacher is done)
#   extras.tar.gz     the plots (acc_vs_epoch, acc_vs_params, heads_vs_epoch), every process's log,
#                     nvidia-smi before/after, the progress summary
#   gpu_heads.log     this script's own output
#   state.tgz.NN      what a fresh machine needs to resume (benchmarks/gpu_heads_tools.py pack)
# (plots and logs are bundled because the device tool brings back at most 8 files).
#
# Resuming: on the same, still warm machine a re-run simply continues (runs/ and cache/ are kept).
# The device machine goes back about 30 s after a call, though, and a fresh one starts empty; then
# copy the state parts back and carry them:  mkdir -p .gpu_state && cp FILES_AT/state.tgz.* .gpu_state/
# and call run with carry [".gpu_data", ".gpu_state"]. Finished runs and teachers are skipped; a run
# whose checkpoint did not fit into the parts starts over. The tool carries 64 MiB in all: the tree
# (~3 MB) + the data (30 MB) + the state (GPU_STATE_PARTS x 14 MiB) stays under it at 2 parts.
#
# Data: the device machine has no Debian package; put the four IDX files into .gpu_data/ here first
#   mkdir -p .gpu_data && cp -r /usr/share/datasets/fashion-mnist .gpu_data/     (30 MB, git-ignored)
# and carry ".gpu_data". The script links them where the loader looks (/usr/share/datasets, as root),
# so the out_dirs' config.yaml stay portable; where it cannot, it sets data.root instead.
#
# How long (an estimate, not a measurement). Training FLOPs, from inhernet.count_flops at 28x28
# (resnet56 is 0.19 GFLOP per forward there, 0.25 at 32x32), x3 for forward + backward, plus the
# teacher's forward for the distilled rows, plus ~6 % for the per-epoch evaluation:
#   resnet56 -> resnet20, 15 rows x 3 seeds + teacher:  17.3 GFLOP per training image of an epoch
#   wrn_40_2 -> wrn_40_1,  7 rows x 3 seeds + teacher:  19.5 GFLOP
#   x 58,800 images x 60 epochs = 61 + 69 = 130 PFLOP, ~138 with evaluation.
# An H200 gives ~990 TFLOP/s dense bf16 (790 measured on large matmuls); at a realistic-for-big-layers
# 30 % (~300 TFLOP/s) that is ~8 minutes of pure compute — but the two teachers come first and each is
# trained by one process alone (2.0 and 5.3 PFLOP, while the other processes wait), and these convs
# are tiny (16-128 channels, 28x28 and smaller, batch 128): they are bound by kernel launches and
# Python, far below 30 % of peak (at 5 %, 138 PFLOP take ~45 minutes). So the full setting does NOT fit
# into one 10-minute window: expect the first window to go mostly to the teachers and the whole to
# take several windows (4-8 of 9 minutes, more if launch-bound). Whatever is committed from a partial
# run must say what was run: the progress summary in gpu_heads.log lists every run done / under way,
# and results.md gives each row's seeds (n = ...).
#
# Settings (environment):
#   GPU_PROCS=8             processes per config (16 in all on the one GPU)
#   GPU_TIME_LIMIT=540      seconds this script may take; it ends by then
#   GPU_REPORT_RESERVE=60   seconds kept for stopping, the reports and packing (SIGTERM at LIMIT - RESERVE)
#   GPU_GRACE=25            seconds between SIGTERM and SIGKILL
#   GPU_SMOKE=0             1: the tiny CPU setting (gpu_heads_tools.py prepare --smoke), 2 processes per config
#   GPU_SMOKE_PRECISION     the smoke test's precision (default 32-bit: bf16 on a CPU is ~9x slower)
#   GPU_SMOKE_EPOCHS=1      the smoke test's epochs (more: to see a stopped run resume)
#   GPU_STATE_IN=.gpu_state folder of state.tgz.NN parts to resume from (when present)
#   GPU_STATE_PARTS=2       state parts written (14 MiB each; 0: none)
#   GPU_MPS=0               1: try to start CUDA MPS so the processes' kernels overlap (untested here)
#   OUT=./gpu_out           where the results go (the device tool sets it)
#   PYTHON                  the interpreter (default .venv/bin/python if it works, else the device's
#                           /opt/torch/.venv/bin/python when there, else python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
SMOKE=${GPU_SMOKE:-0}
if [[ $SMOKE == 1 ]]; then PROCS=${GPU_PROCS:-2}; else PROCS=${GPU_PROCS:-8}; fi
LIMIT=${GPU_TIME_LIMIT:-540}
RESERVE=${GPU_REPORT_RESERVE:-60}
GRACE=${GPU_GRACE:-25}
STATE_IN=${GPU_STATE_IN:-.gpu_state}
STATE_PARTS=${GPU_STATE_PARTS:-2}
source benchmarks/gpu_env.sh
gpu_env gpu_heads  # $OUT, the log, $PYTHON, the environment
TOOLS=benchmarks/gpu_heads_tools.py
CONFIGS=(benchmarks/configs/gpu60k_resnet56_resnet20.yaml benchmarks/configs/gpu60k_wrn_40_2_wrn_40_1.yaml)
if [[ $SMOKE == 1 ]]; then WORK=runs/gpu_smoke; else WORK=runs/gpu; fi
LOGS=$WORK/logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$LOGS"

echo "== gpu_heads.sh $(date -Is): smoke=$SMOKE processes/config=$PROCS limit=${LIMIT}s (SIGTERM at $((LIMIT - RESERVE))s)"
if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | tee "$LOGS/nvidia-smi-before.txt" || true
else echo "nvidia-smi: not available (no NVIDIA GPU here)" | tee "$LOGS/nvidia-smi-before.txt"; fi
"$PYTHON" - <<'EOF'
import sys, torch, lightning
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, lightning {lightning.__version__}, "
      f"cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else ""))
import inhernet, torchmetrics, safetensors, yaml, matplotlib  # noqa: F401 - fail here, not in 16 processes
EOF

# data: the loader's default folder, or data.root
FMNIST=/usr/share/datasets/fashion-mnist
ROOT_ARGS=()
if [[ ! -e $FMNIST/train-images-idx3-ubyte.gz && -d .gpu_data/fashion-mnist ]]; then
  if mkdir -p /usr/share/datasets 2>/dev/null && ln -sfn "$PWD/.gpu_data/fashion-mnist" $FMNIST 2>/dev/null; then
    echo "data: linked .gpu_data/fashion-mnist -> $FMNIST"
  else
    ROOT_ARGS=(--root "$PWD/.gpu_data/fashion-mnist")
    echo "data: $FMNIST not writable; data.root set to .gpu_data/fashion-mnist"
  fi
fi

SMOKE_ARGS=()
[[ $SMOKE == 1 ]] && SMOKE_ARGS=(--smoke --smoke-epochs "${GPU_SMOKE_EPOCHS:-1}"
                                  ${GPU_SMOKE_PRECISION:+--smoke-precision "$GPU_SMOKE_PRECISION"})
mapfile -t RUN_CONFIGS < <("$PYTHON" $TOOLS prepare --dest "$WORK/configs" "${SMOKE_ARGS[@]}" "${ROOT_ARGS[@]}" "${CONFIGS[@]}")
printf 'config: %s\n' "${RUN_CONFIGS[@]}"
[[ -d $STATE_IN ]] && "$PYTHON" $TOOLS unpack "$STATE_IN"

MPS_STARTED=0
if [[ ${GPU_MPS:-0} == 1 ]] && command -v nvidia-cuda-mps-control >/dev/null; then
  if nvidia-cuda-mps-control -d 2>/dev/null; then MPS_STARTED=1; echo "CUDA MPS started"; else echo "CUDA MPS: could not start; without it"; fi
fi

PIDS=()
PLOGS=()
stop_all() {  # SIGTERM: each process stops at the end of its batch and keeps its last epoch's checkpoint
  local sig=$1 pid
  for pid in "${PIDS[@]}"; do kill -"$sig" "$pid" 2>/dev/null || true; done
}
alive() {
  local pid n=0
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && n=$((n + 1)); done
  echo $n
}
cleanup() {
  if [[ ${#PIDS[@]} -gt 0 && $(alive) -gt 0 ]]; then stop_all TERM; sleep 5; stop_all KILL; fi
  if [[ $MPS_STARTED == 1 ]]; then echo quit | nvidia-cuda-mps-control || true; fi
}
trap cleanup EXIT

for cfg in "${RUN_CONFIGS[@]}"; do
  name=$(basename "$cfg" .yaml)
  for i in $(seq 1 "$PROCS"); do
    "$PYTHON" -m inhernet.cli compare "$cfg" >"$LOGS/$name-p$i.log" 2>&1 &
    PIDS+=($!)
    PLOGS+=("$LOGS/$name-p$i.log")
  done
done
echo "started ${#PIDS[@]} processes (logs: $LOGS)"

DEADLINE=$((START + LIMIT - RESERVE))
while [[ $(alive) -gt 0 && $(date +%s) -lt $DEADLINE ]]; do sleep 5; done
if [[ $(alive) -gt 0 ]]; then
  echo "== time limit: SIGTERM to $(alive) process(es) at $(( $(date +%s) - START ))s; they keep their last epoch's checkpoint"
  stop_all TERM
  END_GRACE=$(( $(date +%s) + GRACE ))
  while [[ $(alive) -gt 0 && $(date +%s) -lt $END_GRACE ]]; do sleep 1; done
  if [[ $(alive) -gt 0 ]]; then echo "== SIGKILL to $(alive) process(es)"; stop_all KILL; fi
fi
FAILED=0
for k in "${!PIDS[@]}"; do
  rc=0; wait "${PIDS[$k]}" || rc=$?
  # 143 (SIGTERM) / 137 (SIGKILL): stopped by this script; any other non-zero exit is a failure
  if [[ $rc != 0 && $rc != 143 && $rc != 137 ]]; then
    FAILED=$((FAILED + 1))
    echo "--- process ${PIDS[$k]} exited with $rc; the end of ${PLOGS[$k]}:"
    tail -n 15 "${PLOGS[$k]}"
  fi
done
PIDS=()
if command -v nvidia-smi >/dev/null; then nvidia-smi >"$LOGS/nvidia-smi-after.txt" 2>&1 || true; fi

echo "== reports ($(( $(date +%s) - START ))s)"
PLOTS=()
for cfg in "${RUN_CONFIGS[@]}"; do
  out_dir=$("$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out_dir'])" "$cfg")
  name=$(basename "$out_dir")
  if [[ -f $out_dir/config.yaml && -f $out_dir/teacher.json ]]; then
    "$PYTHON" -m inhernet.cli report "$out_dir" --no-latency >"$LOGS/$name-report.log" 2>&1 \
      || { echo "report of $out_dir failed:"; tail -n 5 "$LOGS/$name-report.log"; }
    mkdir -p "$OUT/$name"
    for f in results.md results.json; do [[ -f $out_dir/$f ]] && cp "$out_dir/$f" "$OUT/$name/"; done
    for f in "$out_dir"/*.png; do [[ -f $f ]] && PLOTS+=("$f"); done
  else
    echo "$name: no report yet (its teacher is not trained yet)"
  fi
done

echo "== progress"
"$PYTHON" $TOOLS progress "${RUN_CONFIGS[@]}" | tee "$LOGS/progress.txt"
tar -czf "$OUT/extras.tar.gz" "$LOGS" "${PLOTS[@]}"
if [[ $STATE_PARTS -gt 0 ]]; then
  rm -f "$OUT"/state.tgz.*
  "$PYTHON" $TOOLS pack --dest "$OUT" --parts "$STATE_PARTS" "${RUN_CONFIGS[@]}" || echo "state: not packed"
fi
echo "== done in $(( $(date +%s) - START ))s; in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
exit $(( FAILED > 0 ? 1 : 0 ))
