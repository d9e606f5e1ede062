"""Time to accuracy: pretraining recipes under one wall-clock budget, then one fine-tuning recipe.

    python -m benchmarks.time_to_accuracy [--budget_s=600] [--variants=demo_bert,budget]
        [--out=DIR] [--no_finetune] [--data=PREPARED_DIR]

Runs each variant one after another on this machine as `make demo` does (`demo.run_demo`: the
embedded Bible, the same held-out documents masked at 15% with the same seed), each for the same
`--budget_s` of training, then fine-tunes every resulting model with one fixed recipe
(benchmarks/finetune_results.py's sentiment run: polarity-en.csv, seeded 80/20 split, seq 64,
batch 16, lr 1e-4, 1 epoch) beside a random-init model of each architecture with the same recipe.
Prints a table (steps, tokens seen, held-out MLM accuracy and loss at 15%, unigram baseline,
polarity dev accuracy) and writes DIR/time_to_accuracy.json with the load average around each run.

Variants (`--variants`, comma-separated; each is a pretrain config plus overrides):
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.finetune_results import RUNS, SHARED  # noqa: E402

# name -> (pretrain config variant, {config key: value}).
VARIANTS = {
    "demo_bert": ("demo_bert", {}),  # today's BERT demo: 1,300 steps, linear decay, time stop
    "demo_bert_wallclock": ("demo_bert", {"train.num_steps": 0}),  # ... fitted to the budget
    "modern_demo": ("modern_demo", {}),  # ModernBERT, MLM only, 30%, 1,300-step linear decay
    "budget": ("budget", {}),  # modern_demo + WSD fitted to the budget (what `make demo` runs)
    "budget_mask15": ("budget", {"data.masked_lm_prob": 0.15, "data.max_predictions": 20}),
    "budget_linear": ("budget", {"optimizer.schedule": "linear"}),  # wall-clock, linear decay
    "budget_f32": ("budget", {"model.dtype": "float32"}),  # the AVX2 machines' dtype choice
}
__doc__ += "".join(f"  {k}: {v[0]} {v[1] or ''}\n" for k, v in VARIANTS.items())


def _set(config, key: str, value) -> None:
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def pretrain(name: str, budget_s: float, out: pathlib.Path, data_src: pathlib.Path | None):
  from bert_jax import demo
  from bert_jax.configs import pretrain as pretrain_configs
  variant, overrides = VARIANTS[name]
  config = pretrain_configs.get_config(variant)
  config.train.max_train_seconds = float(budget_s)
  for key, value in overrides.items():
    _set(config, key, value)
  workdir = out / name
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir(parents=True)
  if data_src is not None:  # The prepared corpus is the same for every variant: prepare once.
    shutil.copytree(data_src, workdir / "data")
  load_before = os.getloadavg()
  t0 = time.time()
  r = demo.run_demo(config, str(workdir))
  r.pop("curves", None)
  r["overrides"] = overrides
  if r["family"] == "bert":
    r["contiguous_rows"] = contiguous_eval(name, {"variant": variant, **r}, out)
  return {"variant": variant, "overrides": overrides, "wall_seconds": round(time.time() - t0, 1),
          "loadavg_before": load_before, "loadavg_after": os.getloadavg(), **r,
          "command": f"python -m bert_jax.cli.demo --workdir={workdir} "
                     f"--config=bert_jax/configs/pretrain.py:{variant} "
                     f"--config.train.max_train_seconds={budget_s:g} "
                     + " ".join(f"--config.{k}={v}" for k, v in overrides.items())}


def contiguous_eval(name: str, r: dict, out: pathlib.Path) -> dict:
  """A BERT run's model evaluated again on the contiguous MLM-only held-out rows the ModernBERT
  runs are evaluated on (data.eval_nsp_mode=none): the same tokens masked the same way, so the
  MLM accuracies compare exactly (BERT's own rows are NSP pairs, half with a random B segment).
  Resumes the run's workdir with num_steps = its final step: no training, only the evaluation."""
  from bert_jax import pretraining
  from bert_jax.configs import pretrain as pretrain_configs
  config = pretrain_configs.get_config(r["variant"])
  for key, value in r["overrides"].items():
    _set(config, key, value)
  workdir = out / name
  config.data.update(dir=str(workdir / "data"), eval_nsp_mode="none", eval_masked_lm_prob=0.15)
  config.data.vocab = str(REPO / "bert_jax" / "resources" / "bert-base-uncased-vocab.txt")
  config.train.update(num_steps=r["train_steps"], max_train_seconds=0.0)
  ev = pretraining.train_and_evaluate(config, str(workdir / "run"))["eval"]
  return {k: ev.get(k) for k in ("mlm_accuracy", "mlm_loss", "unigram_baseline_mlm_accuracy")}


def finetune(model_dir: pathlib.Path, family: str, workdir: pathlib.Path, scratch: bool) -> dict:
  """The fixed polarity recipe from `model_dir` (or its architecture, randomly initialised)."""
  from bert_jax import finetune as finetune_lib
  from bert_jax.configs import finetune as finetune_configs
  arg, overrides = RUNS["random" if scratch else "sentiment"]
  config = finetune_configs.get_config(arg)
  config.init_from = str(model_dir)
  config.model.family = family
  for key, value in overrides.items():
    _set(config, key, value)
  shutil.rmtree(workdir, ignore_errors=True)
  load_before = os.getloadavg()
  summary = finetune_lib.finetune_and_evaluate(config, str(workdir))
  return {"dev_accuracy": round(summary["eval"]["accuracy"], 4), "steps": summary["step"],
          "train_seconds": round(summary["train_seconds"], 1), "loadavg_before": load_before}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--budget_s", type=float, default=600.0)
  p.add_argument("--variants", default="demo_bert,budget")
  p.add_argument("--out", default="time_to_accuracy")
  p.add_argument("--no_finetune", action="store_true")
  p.add_argument("--reeval_only", action="store_true",
                 help="Only add the BERT runs' evaluation on contiguous rows to --out's JSON.")
  p.add_argument("--data", default="", help="A corpus prepared by an earlier demo (WORKDIR/data) "
                 "to reuse instead of preparing the Bible again.")
  args = p.parse_args()
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    sys.exit(f"Unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.reeval_only:
    results = json.loads((out / "time_to_accuracy.json").read_text())
    for name, r in results["runs"].items():
      if r["family"] == "bert":
        r["contiguous_rows"] = contiguous_eval(name, r, out)
    _dump(out, results)
    print(table(results))
    return
  results = {"budget_s": args.budget_s, "cpu": _cpu(), "runs": {}, "finetune_random": {}}
  data_src = pathlib.Path(args.data) if args.data else None
  for name in names:
    print(f"== pretraining {name} for {args.budget_s:g} s", flush=True)
    results["runs"][name] = pretrain(name, args.budget_s, out, data_src)
    data_src = data_src or out / name / "data"
    _dump(out, results)
  polarity = SHARED / "classification" / "polarity-en.csv"
  if args.no_finetune or not polarity.exists():
    results["finetune_skipped"] = ("--no_finetune" if args.no_finetune else
                                   f"{polarity} is absent (not shippable)")
  else:
    for name in names:
      r = results["runs"][name]
      print(f"== fine-tuning {name} on polarity", flush=True)
      r["polarity"] = finetune(out / name / "run" / "model", r["family"], out / f"ft_{name}",
                               scratch=False)
      _dump(out, results)
      if r["family"] not in results["finetune_random"]:
        print(f"== fine-tuning a random-init {r['family']} model on polarity", flush=True)
        results["finetune_random"][r["family"]] = finetune(
            out / name / "run" / "model", r["family"], out / f"ft_random_{r['family']}",
            scratch=True)
        _dump(out, results)
  print(table(results))


def _cpu() -> dict:
  from bert_jax import device_dtype
  model = ""
  try:
    model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo", encoding="utf-8")
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"model": model, "cores": os.cpu_count(), "dtype_auto": device_dtype.describe()}


def _dump(out: pathlib.Path, results: dict) -> None:
  (out / "time_to_accuracy.json").write_text(json.dumps(results, indent=2, default=str))


def table(results: dict) -> str:
  rows = [f"budget {results['budget_s']:g} s per run; {results['cpu']['model']}",
          "| variant | steps (schedule) | tokens seen | held-out MLM acc @15% | unigram | "
          "MLM loss | polarity dev acc | load avg (1 min, before/after) |",
          "|---|---:|---:|---:|---:|---:|---:|---|"]
  for name, r in results["runs"].items():
    pol = r.get("polarity", {}).get("dev_accuracy", "-")
    rows.append(f"| {name} | {r['train_steps']} ({r.get('schedule_steps')}) | "
                f"{r.get('train_tokens', 0):,} | {r['mlm_accuracy']:.4f} | "
                f"{r['unigram_baseline_mlm_accuracy']:.4f} | {r['mlm_loss']:.3f} | {pol} | "
                f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |")
    if "contiguous_rows" in r:  # the same rows as the MLM-only runs' evaluation
      c = r["contiguous_rows"]
      rows.append(f"| {name} (on MLM-only rows) | {r['train_steps']} | - | "
                  f"{c['mlm_accuracy']:.4f} | {c['unigram_baseline_mlm_accuracy']:.4f} | "
                  f"{c['mlm_loss']:.3f} | - | - |")
  for family, r in results["finetune_random"].items():
    rows.append(f"| random-init {family} | 0 | 0 | - | - | - | {r['dev_accuracy']} | "
                f"{r['loadavg_before'][0]:.1f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
