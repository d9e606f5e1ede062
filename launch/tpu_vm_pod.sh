#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM slice (one host or a multi-host pod slice): create the TPU, install
# bert_jax on every worker, prepare the data once, run on all workers, wait, fetch the logs,
# delete the TPU. The workdir and data live in a GCS bucket, mounted with gcsfuse at
# /gcs/BUCKET on every worker (checkpoints, metrics and the exported model survive the VMs).
#
#   launch/tpu_vm_pod.sh --name=bert-base --zone=us-east5-b --accelerator=v5litepod-16 \
#       --bucket=my-bucket [--project=P] [--version=v2-alpha-tpuv5-lite] [--spot] \
#       [--config=configs/pretrain.py:base] [--workdir=runs/bert-base] [--data=data/bible] \
#       [--repo=URL] [--ref=main] [--steps=create,install,prepare,run,wait,logs,delete] \
#       [--logdir=tpu_logs] [--dry-run] [-- --config.mesh.fsdp=16 ...]
#
# --workdir and --data are paths inside the bucket. `prepare` builds the embedded Bible into
# --data when that has no dataset yet (for your own corpus, prepare it anywhere and copy it
# there with `gcloud storage cp -r`). Flags after `--` go to `python -m bert_jax.cli.pretrain`.
# Resume after a preemption or a failure: run again with the same --workdir (e.g.
# --steps=create,install,run,wait,logs,delete); training continues from the last checkpoint.
# --dry-run prints every command without running any.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LAUNCHER=tpu_vm_pod.sh
OPTIONS="name zone project accelerator version bucket config workdir data repo ref steps logdir"
FLAGS="spot"
NAME=""; ZONE=""; PROJECT=""; ACCELERATOR=""; VERSION=""; SPOT=0; BUCKET=""
CONFIG="configs/pretrain.py:base"; WORKDIR=""; DATA="data/bible"
REPO="https://github.com/OWNER/bert_jax"; REF="main"
STEPS="create,install,prepare,run,wait,logs,delete"; LOGDIR="tpu_logs"
VOCAB="bert_jax/resources/bert-base-uncased-vocab.txt"
parse_options "$@"; set -- "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"
BUCKET="$(bucket_name "$BUCKET")"
[[ -n "$NAME" && -n "$ZONE" && -n "$BUCKET" ]] || die "--name, --zone and --bucket are required."
WORKDIR="${WORKDIR:-runs/$NAME}"
WORKDIR="${WORKDIR#/}"; DATA="${DATA#/}"
for s in ${STEPS//,/ }; do
  case "$s" in create|install|prepare|run|wait|logs|delete) ;;
    *) die "--steps has unknown step '$s'; use create,install,prepare,run,wait,logs,delete." ;;
  esac
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }
if has_step create; then
  [[ -n "$ACCELERATOR" ]] || die "--accelerator (e.g. v5litepod-16, v4-32, v6e-16) is required to create the TPU."
  if [[ -z "$VERSION" ]]; then  # The runtime image that goes with each TPU generation.
    case "$ACCELERATOR" in
      v5litepod-*) VERSION="v2-alpha-tpuv5-lite" ;;
      v5p-*) VERSION="v2-alpha-tpuv5" ;;
      v6e-*) VERSION="v2-alpha-tpuv6e" ;;
      *) VERSION="tpu-ubuntu2204-base" ;;
    esac
  fi
fi

MOUNT="/gcs/$BUCKET"
# Expanded on the workers: the clone (its configs/ is what --config names), the run's log and rc.
REMOTE_DIR='$HOME/bert_jax'; RUN_LOG='$HOME/bert_jax_run.log'; RUN_RC='$HOME/bert_jax_run.rc'

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
on_workers() {  # on_workers WORKER COMMAND: a shell command on worker WORKER (a number or all).
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

# gcsfuse from Google's apt repository (TPU VM images do not ship it), then the bucket mount.
MOUNT_CMD="set -e
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT"
# Then the checkout, tcmalloc for the host process (bert_jax/allocator.py preloads it when
# installed; under glibc XLA's large per-step host buffers are mapped and zeroed on every step)
# and the package.
INSTALL_CMD="$MOUNT_CMD
if [ -d $REMOTE_DIR ]; then git -C $REMOTE_DIR fetch -q --depth 1 origin $(q "$REF") && git -C $REMOTE_DIR checkout -q FETCH_HEAD
else git clone -q --depth 1 --branch $(q "$REF") $(q "$REPO") $REMOTE_DIR; fi
dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 || (sudo apt-get -qq update && sudo apt-get -qq install -y libtcmalloc-minimal4)
pip install -q -e \"$REMOTE_DIR[tpu]\""
PREPARE_CMD="set -e
cd $REMOTE_DIR
if [ ! -f $MOUNT/$DATA/metadata.json ]; then
  rm -rf /tmp/bert_jax_data
  python3 -m bert_jax.cli.prepare --input=bible --layout=lines --doc_lines=32 --validation_fraction=0.05 --vocab=$VOCAB --output_dir=/tmp/bert_jax_data
  gcloud storage cp -r '/tmp/bert_jax_data/*' gs://$BUCKET/$DATA/
fi"

TRAIN=(python3 -m bert_jax.cli.pretrain --config="$CONFIG" --workdir="$MOUNT/$WORKDIR"
       --config.data.dir="$MOUNT/$DATA" --config.data.vocab="$VOCAB" "$@")
TRAIN_LINE="$(quote_words "${TRAIN[@]}")"
# Detached, so a dropped SSH connection does not stop training; the exit code lands in RUN_RC.
# BERT_JAX_DISTRIBUTED=auto: jax.distributed.initialize() finds the slice's workers itself.
RUN_CMD="cd $REMOTE_DIR && rm -f $RUN_RC && mountpoint -q $MOUNT && nohup bash -c $(q "BERT_JAX_DISTRIBUTED=auto $TRAIN_LINE; echo \$? > $RUN_RC") > $RUN_LOG 2>&1 < /dev/null &"
WAIT_CMD="while [ ! -f $RUN_RC ]; do sleep 60; done; tail -n 3 $RUN_LOG; exit \$(cat $RUN_RC)"
LOGS_CMD="mkdir -p $MOUNT/$WORKDIR/logs && cp $RUN_LOG $MOUNT/$WORKDIR/logs/\$(hostname).log"

echo "# TPU $NAME ($ACCELERATOR) in $ZONE; workdir gs://$BUCKET/$WORKDIR, data gs://$BUCKET/$DATA"
STATUS=0
if has_step create; then
  CREATE=("${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR"
          --version="$VERSION")
  [[ "$SPOT" == 1 ]] && CREATE+=(--spot)
  run "${CREATE[@]}"
fi
has_step install && on_workers all "$INSTALL_CMD"
has_step prepare && on_workers 0 "$PREPARE_CMD"
has_step run && on_workers all "$RUN_CMD"
if has_step wait; then on_workers all "$WAIT_CMD" || STATUS=$?; fi
if has_step logs; then
  on_workers all "$LOGS_CMD" || true
  [[ "$DRY_RUN" == 1 ]] || mkdir -p "$LOGDIR"
  run gcloud storage cp -r "gs://$BUCKET/$WORKDIR/logs" "$LOGDIR/" || true
  run gcloud storage cp "gs://$BUCKET/$WORKDIR/metrics.jsonl" "$LOGDIR/" || true
fi
has_step delete && run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
exit "$STATUS"
