#!/usr/bin/env bash
# N bert_jax processes on this machine, coordinated through jax.distributed on 127.0.0.1: the
# multi-host code path (one data shard per process, global arrays, orbax multi-process
# checkpoints) without a cluster. The tests run it with two processes of two CPU devices each.
#
#   launch/local_multiprocess.sh [--nproc=2] [--cpu_devices=2] [--port=12355] [--logdir=DIR]
#       [--module=bert_jax.cli.pretrain] [--dry-run] -- --config=configs/pretrain.py:tiny \
#       --workdir=/tmp/run --config.data.dir=DATA
#
# Everything after `--` goes to `python -m MODULE` in every process. Each process logs to
# LOGDIR/process_I.log (default: a new temp folder); process 0's log is also shown. The script
# exits with the first non-zero exit code and then stops the other processes (SIGTERM: they
# save a checkpoint and exit). Ctrl-C / SIGTERM to this script is forwarded the same way.
# --cpu_devices=K fakes K CPU devices per process (XLA_FLAGS); 0 keeps the real devices
# (e.g. one process per GPU: set CUDA_VISIBLE_DEVICES per process yourself).
# PYTHON (default: python3) is the interpreter.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCHER=local_multiprocess.sh
OPTIONS="nproc cpu_devices port logdir module"
NPROC=2; CPU_DEVICES=2; PORT=12355; LOGDIR=""; MODULE="bert_jax.cli.pretrain"
PYTHON="${PYTHON:-python3}"
parse_options "$@"; set -- "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--nproc=$NPROC is not a positive integer."
[[ "$CPU_DEVICES" =~ ^[0-9]+$ ]] || die "--cpu_devices=$CPU_DEVICES is not a non-negative integer."
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port=$PORT is not a port number."
[[ $# -gt 0 ]] || die "nothing to run: pass the module's flags after --, e.g. -- --config=configs/pretrain.py:tiny --workdir=/tmp/run."

env_for() {  # The environment of process $1, as NAME=value words.
  local words=("BERT_JAX_COORDINATOR=127.0.0.1:$PORT" "BERT_JAX_NUM_PROCESSES=$NPROC"
               "BERT_JAX_PROCESS_ID=$1")
  if [[ "$CPU_DEVICES" -gt 0 ]]; then
    words+=("JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$CPU_DEVICES")
  fi
  printf '%s\n' "${words[@]}"
}

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NPROC; i++)); do
    line="env"
    while IFS= read -r w; do line+=" $(q "$w")"; done < <(env_for "$i")
    line+=" $(q "$PYTHON") -m $(q "$MODULE")"
    for a in "$@"; do line+=" $(q "$a")"; done
    echo "$line > $(q "${LOGDIR:-LOGDIR}/process_$i.log") 2>&1 &"
  done
  echo "wait"
  exit 0
fi

LOGDIR="${LOGDIR:-$(mktemp -d "${TMPDIR:-/tmp}/bert_jax_local.XXXXXX")}"
mkdir -p "$LOGDIR"
PIDS=()
stop_all() {  # SIGTERM to the processes this script started that are still running.
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'echo "local_multiprocess.sh: stopping the processes (they save and exit)" >&2; stop_all' INT TERM

for ((i = 0; i < NPROC; i++)); do
  mapfile -t ENV_WORDS < <(env_for "$i")
  env "${ENV_WORDS[@]}" "$PYTHON" -m "$MODULE" "$@" > "$LOGDIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "local_multiprocess.sh: $NPROC processes (${PIDS[*]}), coordinator 127.0.0.1:$PORT, logs in $LOGDIR" >&2

# Wait for all; on the first failure stop the others so none hangs in a collective.
STATUS=0
REMAINING=("${PIDS[@]}")
while [[ ${#REMAINING[@]} -gt 0 ]]; do
  NEXT=()
  for idx in "${!REMAINING[@]}"; do
    pid="${REMAINING[$idx]}"
    if kill -0 "$pid" 2>/dev/null; then NEXT+=("$pid"); continue; fi
    rc=0; wait "$pid" || rc=$?
    if [[ $rc -ne 0 && $STATUS -eq 0 ]]; then
      STATUS=$rc
      for ((i = 0; i < NPROC; i++)); do [[ "${PIDS[$i]}" == "$pid" ]] && failed=$i; done
      echo "local_multiprocess.sh: process ${failed:-?} exited with $rc; stopping the others. Its log:" >&2
      tail -n 20 "$LOGDIR/process_${failed:-0}.log" >&2 || true
      stop_all
    fi
  done
  REMAINING=("${NEXT[@]+"${NEXT[@]}"}")
  [[ ${#REMAINING[@]} -gt 0 ]] && sleep 0.5
done
cat "$LOGDIR/process_0.log"
exit "$STATUS"
