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

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
LAUNCHER=jobset.sh
OPTIONS="name bucket accelerator topology chips_per_host config workdir data image repo ref
         service_account max_restarts"
NAME=""; BUCKET=""; ACCELERATOR="tpu-v5-lite-podslice"; TOPOLOGY="4x4"; CHIPS_PER_HOST=4
CONFIG="configs/pretrain.py:base"; WORKDIR=""; DATA="data/bible"; IMAGE="python:3.12"
REPO="https://github.com/OWNER/bert_jax"; REF="main"; SERVICE_ACCOUNT="default"
MAX_RESTARTS=10
VOCAB="bert_jax/resources/bert-base-uncased-vocab.txt"
parse_options "$@"; set -- "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"
BUCKET="$(bucket_name "$BUCKET")"
[[ -n "$NAME" && -n "$BUCKET" ]] || die "--name and --bucket are required."
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name=$NAME must be a DNS label (lower-case letters, digits, '-')."
[[ "$TOPOLOGY" =~ ^[0-9]+(x[0-9]+)+$ ]] || die "--topology=$TOPOLOGY is not like 4x4 or 2x2x4."
[[ "$CHIPS_PER_HOST" =~ ^[1-9][0-9]*$ ]] || die "--chips_per_host=$CHIPS_PER_HOST is not a positive integer."
CHIPS=$(( ${TOPOLOGY//x/*} ))
(( CHIPS % CHIPS_PER_HOST == 0 )) || die "topology $TOPOLOGY has $CHIPS chips, not a multiple of --chips_per_host=$CHIPS_PER_HOST."
HOSTS=$(( CHIPS / CHIPS_PER_HOST ))
WORKDIR="${WORKDIR:-runs/$NAME}"; WORKDIR="${WORKDIR#/}"; DATA="${DATA#/}"
MOUNT="/gcs/$BUCKET"

TRAIN=(python3 -m bert_jax.cli.pretrain --config="$CONFIG" --workdir="$MOUNT/$WORKDIR"
       --config.data.dir="$MOUNT/$DATA" --config.data.vocab="$VOCAB" "$@")
TRAIN_LINE="$(quote_words "${TRAIN[@]}")"
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
