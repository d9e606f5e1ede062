#!/usr/bin/env bash
# Pretrain on a multi-host TPU slice in GKE: renders a JobSet (one pod per TPU host, all in one
# node pool slice) and applies it with kubectl. Needs a GKE cluster with a TPU node pool of that
# topology, the JobSet controller, the GCS FUSE CSI driver, and a Kubernetes service account
# allowed to read and write the bucket (Workload Identity).
#
#   launch/gke/jobset.sh --name=bert-base --bucket=my-bucket \
#       [--accelerator=tpu-v5-lite-podslice] [--topology=4x4] [--chips_per_host=4] \
#       [--config=configs/pretrain.py:base] [--workdir=runs/bert-base] [--data=data/bible] \
#       [--image=python:3.12] [--repo=URL] [--ref=main] [--service_account=default] \
#       [--max_restarts=10] [--dry-run] [-- --config.mesh.fsdp=16 ...]
#
# The bucket is mounted at /gcs/BUCKET in every pod; --workdir and --data are paths inside it
# (prepare the data first, e.g. with launch/tpu_vm_pod.sh --steps=prepare or bert-jax-prepare
# plus `gcloud storage cp -r`). When a pod is preempted or fails, the JobSet restarts all pods
# (up to --max_restarts) and training resumes from the workdir's last checkpoint.
# --dry-run prints the kubectl command with the manifest instead of running it.
# The same job with xpk (which creates the JobSet for you) is printed as a comment.
set -euo pipefail

NAME=""; BUCKET=""; ACCELERATOR="tpu-v5-lite-podslice"; TOPOLOGY="4x4"; CHIPS_PER_HOST=4
CONFIG="configs/pretrain.py:base"; WORKDIR=""; DATA="data/bible"; IMAGE="python:3.12"
REPO="https://github.com/OWNER/bert_jax"; REF="main"; SERVICE_ACCOUNT="default"
MAX_RESTARTS=10; DRY_RUN=0
VOCAB="bert_jax/resources/bert-base-uncased-vocab.txt"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "jobset.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}"; BUCKET="${BUCKET#gs://}"; BUCKET="${BUCKET%%/*}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --topology=*) TOPOLOGY="${1#*=}" ;;
    --chips_per_host=*) CHIPS_PER_HOST="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --data=*) DATA="${1#*=}" ;;
    --image=*) IMAGE="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --service_account=*) SERVICE_ACCOUNT="${1#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${1#*=}" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help; flags for bert_jax.pretrain go after --)." ;;
  esac
  shift
done
[[ -n "$NAME" && -n "$BUCKET" ]] || die "--name and --bucket are required."
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name=$NAME must be a DNS label (lower-case letters, digits, '-')."
[[ "$TOPOLOGY" =~ ^[0-9]+(x[0-9]+)+$ ]] || die "--topology=$TOPOLOGY is not like 4x4 or 2x2x4."
[[ "$CHIPS_PER_HOST" =~ ^[1-9][0-9]*$ ]] || die "--chips_per_host=$CHIPS_PER_HOST is not a positive integer."
CHIPS=$(( ${TOPOLOGY//x/*} ))
(( CHIPS % CHIPS_PER_HOST == 0 )) || die "topology $TOPOLOGY has $CHIPS chips, not a multiple of --chips_per_host=$CHIPS_PER_HOST."
HOSTS=$(( CHIPS / CHIPS_PER_HOST ))
WORKDIR="${WORKDIR:-runs/$NAME}"; WORKDIR="${WORKDIR#/}"; DATA="${DATA#/}"
MOUNT="/gcs/$BUCKET"

# One shell word, quoted only when it needs to be.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
TRAIN=(python3 -m bert_jax.pretrain --config="$CONFIG" --workdir="$MOUNT/$WORKDIR"
       --config.data.dir="$MOUNT/$DATA" --config.data.vocab="$VOCAB" "$@")
TRAIN_LINE=""
for a in "${TRAIN[@]}"; do TRAIN_LINE+="${TRAIN_LINE:+ }$(q "$a")"; done
# The pod installs bert_jax at start (bake it into --image for production); GKE sets
# TPU_WORKER_HOSTNAMES, from which bert_jax's CLI starts jax.distributed.
SCRIPT="set -e; git clone -q --depth 1 --branch $(q "$REF") $(q "$REPO") /bert_jax && cd /bert_jax && pip install -q -e '.[tpu]' && exec $TRAIN_LINE"
# As a YAML double-quoted scalar.
YAML_SCRIPT="\"$(printf '%s' "$SCRIPT" | sed 's/\\/\\\\/g; s/"/\\"/g')\""

MANIFEST="apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $NAME
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $MAX_RESTARTS
  replicatedJobs:
  - name: slice
    replicas: 1
    template:
      spec:
        parallelism: $HOSTS
        completions: $HOSTS
        backoffLimit: 0
        template:
          metadata:
            annotations:
              gke-gcsfuse/volumes: \"true\"
          spec:
            serviceAccountName: $SERVICE_ACCOUNT
            restartPolicy: Never
            hostNetwork: true
            dnsPolicy: ClusterFirstWithHostNet
            terminationGracePeriodSeconds: 300
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: $ACCELERATOR
              cloud.google.com/gke-tpu-topology: $TOPOLOGY
            containers:
            - name: bert-jax
              image: $IMAGE
              command: [bash, -c]
              args: [$YAML_SCRIPT]
              ports:
              - containerPort: 8471
              - containerPort: 8080
              resources:
                limits:
                  google.com/tpu: $CHIPS_PER_HOST
              volumeMounts:
              - name: gcs
                mountPath: $MOUNT
            volumes:
            - name: gcs
              csi:
                driver: gcsfuse.csi.storage.gke.io
                volumeAttributes:
                  bucketName: $BUCKET
                  mountOptions: implicit-dirs"

echo "# JobSet $NAME: $HOSTS hosts x $CHIPS_PER_HOST chips ($ACCELERATOR $TOPOLOGY), workdir gs://$BUCKET/$WORKDIR"
echo "# The same with xpk: xpk workload create --cluster=CLUSTER --workload=$NAME --tpu-type=TPU_TYPE --num-slices=1 --docker-image=$IMAGE --command=$(q "$SCRIPT") (mount the bucket at $MOUNT in the image or the cluster)"
echo "+ kubectl apply -f - <<'EOF'"
echo "$MANIFEST"
echo "EOF"
if [[ "$DRY_RUN" != 1 ]]; then
  printf '%s\n' "$MANIFEST" | kubectl apply -f -
  echo "Follow it: kubectl get jobset $NAME; kubectl logs -f -l jobset.sigs.k8s.io/jobset-name=$NAME --max-log-requests=$HOSTS"
fi
