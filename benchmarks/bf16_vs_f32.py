"""Does bf16 hurt learning? 200 steps of configs/pretrain.py:demo with model.dtype=bfloat16 and
with float32, same seed, data order and initialisation, on the demo corpus (the embedded World
English Bible, prepared as `make demo` does); compares the MLM loss.

  .venv/bin/python -m benchmarks.bf16_vs_f32 --output_dir=/tmp/bf16_vs_f32 [--steps=200]

bfloat16 here means what the model does with it: matmul inputs in bf16 with f32 accumulation
(forward and backward), f32 master weights, optimizer, LayerNorm, softmax and losses.
Writes WORKDIR/bf16_vs_f32.json and prints the train MLM loss every `--log_every` steps and the
held-out MLM loss at the end.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("output_dir", "/tmp/bf16_vs_f32",
                                "Data and one run folder per dtype.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per run.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 20, "Steps per logged train-loss window.")
_DATA = flags.DEFINE_string("data_dir", "", "A prepared dataset; default: the demo corpus, "
                            "prepared under WORKDIR/data.")
_VOCAB = flags.DEFINE_string("vocab", "", "The dataset's vocabulary (default: the demo corpus's, "
                             "bert-base-uncased).")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.02, "Relative MLM-loss margin bf16 may exceed f32 "
                                "by and still count as 'not worse' (run-to-run noise).")

DTYPES = ("bfloat16", "float32")


def demo_config(dtype: str, data_dir: str, vocab: str, steps: int, log_every: int):
  from benchmarks.bert_jax_step import load_config
  c = load_config("demo")
  c.model.dtype = dtype
  c.data.update(dir=data_dir, vocab=vocab)
  c.train.update(num_steps=steps, max_train_seconds=0.0, log_every=log_every, eval_every=0)
  c.checkpoint.update(every_steps=10 * steps, async_save=False)
  return c


def train_curve(workdir: str) -> list[tuple[int, float]]:
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  return [(r["step"], r["train/mlm_loss"]) for r in rows if "train/mlm_loss" in r]


def main(argv):
  del argv
  from bert_jax import demo, pretraining
  runs = {d: os.path.join(_WORKDIR.value, d) for d in DTYPES}
  for path in runs.values():
    if os.path.exists(path):
      raise app.UsageError(f"{path} already exists (a run would resume, not retrain); choose a new "
                           f"--output_dir or remove it.")
  data_dir = _DATA.value or demo.prepare_corpus(_WORKDIR.value)
  results = {"steps": _STEPS.value, "data_dir": data_dir, "command": " ".join(sys.argv)}
  for d, path in runs.items():
    config = demo_config(d, data_dir, _VOCAB.value or demo.VOCAB, _STEPS.value, _LOG_EVERY.value)
    t0 = time.time()
    summary = pretraining.train_and_evaluate(config, path)
    results[d] = {"seconds": time.time() - t0, "train_mlm_loss": train_curve(path),
                  "eval": summary["eval"], "final_train": summary["train"]}
    print(f"{d}: eval MLM loss {summary['eval'].get('mlm_loss', float('nan')):.4f} after "
          f"{_STEPS.value} steps ({time.time() - t0:.0f} s)", flush=True)
  bf, f32 = results["bfloat16"], results["float32"]
  print(f"\n{'step':>5s} {'bf16 MLM':>9s} {'f32 MLM':>9s}")
  for (s, a), (_, b) in zip(bf["train_mlm_loss"], f32["train_mlm_loss"], strict=False):
    print(f"{s:5d} {a:9.4f} {b:9.4f}")
  eb, ef = bf["eval"]["mlm_loss"], f32["eval"]["mlm_loss"]
  ok = eb <= ef * (1 + _TOLERANCE.value)
  results.update(eval_mlm_loss_bf16=eb, eval_mlm_loss_f32=ef, bf16_not_worse=ok)
  print(f"\nheld-out MLM loss: bf16 {eb:.4f}, f32 {ef:.4f} ({(eb - ef) / ef:+.2%}); "
        f"MLM accuracy bf16 {bf['eval'].get('mlm_accuracy', float('nan')):.4f}, "
        f"f32 {f32['eval'].get('mlm_accuracy', float('nan')):.4f}; speed bf16 "
        f"{bf['final_train'].get('tokens_per_sec', 0):.0f} vs f32 "
        f"{f32['final_train'].get('tokens_per_sec', 0):.0f} tokens/s")
  print("bf16 is not worse than f32" if ok else
        f"bf16 is worse than f32 by more than {_TOLERANCE.value:.0%}")
  out = os.path.join(_WORKDIR.value, "bf16_vs_f32.json")
  with open(out + ".tmp", "w") as f:
    json.dump(results, f, indent=2, default=str)
  os.replace(out + ".tmp", out)
  print(f"Wrote {out}")
  return 0 if ok else 1


if __name__ == "__main__":
  app.run(main)
