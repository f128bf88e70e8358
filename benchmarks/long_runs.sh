#!/usr/bin/env bash
# The long CPU comparisons of issue 11 (benchmarks/configs/fmnist60k_*.yaml), run in pieces across
# sessions whose machine may be new each time. Their state lives in benchmarks/store/ and is committed.
#
#   bash benchmarks/long_runs.sh start [wrn]  # two background processes, one thread each (logs: $LOG_DIR)
#                                          # (wrn: then the wrn rows, then the rows with 1/3 of the epochs)
#   bash benchmarks/long_runs.sh status   # every planned run: done / epoch k of n / not started
#   bash benchmarks/long_runs.sh save     # stage the run records and reports for a commit (trained
#                                         # artefacts — weights, checkpoints — stay out of git)
#   bash benchmarks/long_runs.sh stop     # end the processes (each keeps its last finished epoch)
#
# What `start` runs: two processes (the methods' runs at one thread each, the teacher at the config's
# teacher.threads = 2) on the resnet pair: its deciding rows (DECIDE), then the budget sweep (SWEEP,
# 3 seeds since session 16), then the remaining rows (REST); the first process trains the teacher if needed; the second
# meanwhile trains the plain-student rows of both pairs (they never see a teacher), then both share the
# resnet runs. `start wrn`: the second process trains the wrn pair's rows before it joins, and the first
# joins the wrn rows once the resnet ones are done. The wrn teacher
# (~8 min an epoch at 2 threads on the faster machine type, 15 epochs) was trained once in session 12
# and its weights committed once, so it comes back from the history like the resnet one. A teacher or run
# resumes from its checkpoint only on the machine that holds it. After the wrn rows, both processes of
# `start wrn` train the InherNet rows of both pairs with a third of the epochs (THIRD_*: the same recipe,
# 3 epochs, for the target "reaches the best KD student's final accuracy in <= 1/3 of the epochs"). On a new machine the resnet teacher's
# weights come back from the repository's history (an earlier commit held them;
# benchmarks/teacher_from_history.py checks them against the record), on any machine type. Where the
# history holds none, a teacher is retrained and checked against its committed record epoch by epoch:
# the same network (CPU training repeats bit for bit on the same machine type and thread count) and the
# committed runs stand; at the first epoch that differs it stops, the record is kept and notes the
# machine type (`start` there then says so and starts nothing; see inhernet/compare/teacher.py).
#
#   NEW_TEACHER=1 bash benchmarks/long_runs.sh start   # ONCE, on the machine type of the committed
#       teacher: replace it (trained at one thread) by one trained at teacher.threads (2: 1.58x faster in docs/benchmarks/teacher_threads.md,
#       so every later session's retraining frees the cores ~40 min earlier). The new teacher supersedes
#       the record; the rows trained against the old one (STALE) are retrained, the others start fresh.
#       Refused on a machine type noted as not repeating the record, or once the record is at 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
LOG_DIR=${LOG_DIR:-/tmp/benchlogs}
R56=benchmarks/configs/fmnist60k_resnet56_resnet20.yaml
WRN=benchmarks/configs/fmnist60k_wrn_40_2_wrn_40_1.yaml
THIRD_R56=benchmarks/configs/fmnist60k_resnet56_resnet20_third.yaml
THIRD_WRN=benchmarks/configs/fmnist60k_wrn_40_2_wrn_40_1_third.yaml
DECIDE=${DECIDE:-"student student_dkd h1_svd h1_whitened h2_copies h2_perturbed h3_copies h3_perturbed h3_whitened h3_wo_gate large"}
SWEEP=${SWEEP:-"h1_b015 h2p_b015 h1_b045 h2p_b045"}   # H = 1 vs the best gated at 0.15 and 0.45 of the teacher
REST=${REST:-"h3_split student_kd h3_uniform h3_symmetric"}
# NEW_TEACHER=1: the rows with runs trained against the committed teacher, and the deciding rows without any
STALE="student_dkd h1_svd h2_perturbed"
FRESH="h3_copies h3_whitened h3_wo_gate large"

case "${1:-status}" in
  start)
    # the resnet teacher's weights, which an earlier commit held, come back from the history (checked
    # against its record: benchmarks/teacher_from_history.py), so its inherited rows run on any machine
    # type; where the history has none, the checks below decide whether a retraining here can repeat it
    # (with runs going, the weights are here and this does nothing)
    "$BIN/python" benchmarks/teacher_from_history.py "$R56" || true
    "$BIN/python" benchmarks/teacher_from_history.py "$WRN" || true   # the wrn_40_2 one, once a commit held it
    # a machine type that has already failed to repeat the committed teacher would stop at once: say so;
    # NEW_TEACHER=1 (once: the switch to the config's teacher.threads) is refused where it cannot help
    if ! NEW_TEACHER="${NEW_TEACHER:-}" "$BIN/python" - "$R56" <<'EOF'
import os
import sys

from inhernet.compare import load_config
from inhernet.compare.teacher import teacher_folder, teacher_ready, unrepeatable_reason
from inhernet.utils import read_json

cfg = load_config(sys.argv[1])
threads = cfg.teacher.threads or cfg.trainer.threads
# the committed record, or the one set aside while a retraining (or the switch) runs on this machine
done = read_json(teacher_folder(cfg) / "done.json") or read_json(teacher_folder(cfg) / "recorded" / "done.json")
new = os.environ.get("NEW_TEACHER") == "1"
if done and not teacher_ready(cfg):
    # this machine type cannot repeat the record even at its own thread count: nothing to do here
    noted = unrepeatable_reason(done, (done.get("machine") or {}).get("threads") or threads)
    if noted:
        print(f"not started: the committed {cfg.teacher.arch} teacher cannot be retrained here: {noted}; its "
              "inherited rows need the machine type that trained it (or a GPU: benchmarks/gpu_heads.sh)")
        sys.exit(1)
    why = unrepeatable_reason(done, threads)
    if why and not new:
        print(f"not started: the committed {cfg.teacher.arch} teacher cannot be retrained here: {why}. "
              "`NEW_TEACHER=1 bash benchmarks/long_runs.sh start` switches, once, on the machine type that trained it")
        sys.exit(1)
if new and (not done or (done.get("machine") or {}).get("threads") == threads):
    print(f"not started: NEW_TEACHER=1 replaces a committed teacher trained at another thread count than "
          f"teacher.threads = {threads}; this one {'does not exist' if not done else 'already is at that count'}. "
          "Run `bash benchmarks/long_runs.sh start` without it.")
    sys.exit(1)
EOF
    then exit 1; fi
    if pgrep -f "inhernet compare benchmarks/configs/fmnist60k_" >/dev/null; then
      echo "already running:"; pgrep -af "inhernet compare benchmarks/configs/fmnist60k_"; exit 1
    fi
    mkdir -p "$LOG_DIR"
    if [ "${NEW_TEACHER:-}" = 1 ]; then
      # the switch: a new teacher at teacher.threads (it supersedes the record), the three rows trained
      # against the old one retrained (--force on them only), every other deciding row meanwhile
      setsid nohup bash -c "'$BIN/inhernet' compare '$R56' --new-teacher --force --methods $STALE --threads 1 && \
        '$BIN/inhernet' compare '$R56' --methods $DECIDE --threads 1" >"$LOG_DIR/resnet56-a.log" 2>&1 </dev/null &
      echo "started resnet56-a (pid $!): a new teacher, then $STALE again, then the deciding rows -> $LOG_DIR/resnet56-a.log"
      sleep 20
      setsid nohup bash -c "'$BIN/inhernet' compare '$R56' --methods $FRESH --threads 1; \
        '$BIN/inhernet' compare '$R56' --methods $DECIDE --threads 1" >"$LOG_DIR/resnet56-b.log" 2>&1 </dev/null &
      echo "started resnet56-b (pid $!): waits for the teacher, then $FRESH, then the deciding rows -> $LOG_DIR/resnet56-b.log"
    else
    rows="'$BIN/inhernet' compare '$R56' --methods $DECIDE --threads 1; \
      '$BIN/inhernet' compare '$R56' --methods $SWEEP --threads 1; \
      '$BIN/inhernet' compare '$R56' --methods $REST --threads 1"
    # `start wrn`: when the resnet rows are done, the first process joins the wrn rows (the runs' lock
    # files share them out), so no core idles while the second one still trains them
    first="$rows"
    third="'$BIN/inhernet' compare '$THIRD_R56' --threads 1 --progress log; \
      '$BIN/inhernet' compare '$THIRD_WRN' --threads 1 --progress log"
    [ "${2:-}" = wrn ] && first="$rows; '$BIN/inhernet' compare '$WRN' --threads 1 --progress log; $third"
    setsid nohup bash -c "$first" >"$LOG_DIR/resnet56-a.log" 2>&1 </dev/null &
    echo "started resnet56-a (pid $!): the resnet rows ($DECIDE), the sweep ($SWEEP), then $REST${2:+, then the wrn rows and the 1/3-epoch rows} -> $LOG_DIR/resnet56-a.log"
    sleep 20  # the first takes the teacher's lock; the second trains the plain students of both pairs
    # meanwhile (they never see a teacher), then joins the first on the resnet rows
    # `start wrn`: the second process trains the wrn pair's rows first (one process per core, not three)
    second="'$BIN/inhernet' compare '$R56' --methods student --threads 1; \
      '$BIN/inhernet' compare '$WRN' --methods student --threads 1"
    [ "${2:-}" = wrn ] && second="$second; '$BIN/inhernet' compare '$WRN' --threads 1 --progress log"
    [ "${2:-}" = wrn ] && rows="$rows; $third"
    setsid nohup bash -c "$second; $rows" >"$LOG_DIR/resnet56-b.log" 2>&1 </dev/null &
    echo "started resnet56-b (pid $!): the students of both pairs, ${2:+the wrn rows, }then the same resnet rows${2:+ and the 1/3-epoch rows} -> $LOG_DIR/resnet56-b.log"
    fi
    ;;
  status)
    "$BIN/inhernet" compare "$R56" --status
    "$BIN/inhernet" compare "$WRN" --status
    "$BIN/inhernet" compare "$THIRD_R56" --status
    "$BIN/inhernet" compare "$THIRD_WRN" --status
    ;;
  save)
    # finished runs' records and the teachers' metrics/config are tracked as usual (the ignore rules
    # keep run weights and checkpoints out); a teacher still training also needs its checkpoint
    git add benchmarks/store   # records and reports only: the ignore rules keep weights and checkpoints out
    # a teacher being retrained (its committed record set aside in recorded/) keeps the committed record
    # until the retrained one is checked: its folder is not staged
    for rec in benchmarks/store/cache/teachers/*/recorded; do
      [ -d "$rec" ] && git reset -q -- "$(dirname "$rec")" && echo "not staged (teacher being retrained): $(dirname "$rec")"
    done
    git status --short benchmarks/store | head -40
    ;;
  stop)
    # the wrappers first (a `bash -c` chain would start its next command), then the comparisons
    pkill -f "bash -c .*inhernet'? compare '?benchmarks/configs/fmnist60k_" || true
    pkill -f "inhernet compare benchmarks/configs/fmnist60k_" && echo "stopped" || echo "nothing running"
    ;;
  *)
    echo "usage: bash benchmarks/long_runs.sh start [wrn]|status|save|stop" >&2; exit 2 ;;
esac
