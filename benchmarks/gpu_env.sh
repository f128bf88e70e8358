# Shared set-up of the prepared GPU scripts (gpu_heads.sh, gpu_llm.sh); sourced from the repository
# root after `set -euo pipefail`. `gpu_env LOG_NAME` makes $OUT (default ./gpu_out; the device tool
# sets it) absolute, copies everything the script prints into $OUT/LOG_NAME.log, chooses $PYTHON
# (given, else .venv/bin/python when it imports torch, else the device's /opt/torch/.venv/bin/python
# when there, else python3) and exports the environment every step runs in (src/ first on the path,
# unbuffered output, no Hugging Face downloads).
gpu_env() {
  OUT=${OUT:-./gpu_out}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  exec > >(tee -a "$OUT/$1.log") 2>&1
  if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then PYTHON=.venv/bin/python
    elif [[ -x /opt/torch/.venv/bin/python ]]; then PYTHON=/opt/torch/.venv/bin/python
    else PYTHON=python3; fi
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
}
