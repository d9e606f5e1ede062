"""BERT vs ModernBERT: one pretraining train step of each family, same batch, same run.

  .venv/bin/python -m benchmarks.family_step [--rows=128,512] [--steps=5] [--json=FILE]

Each row builds the family's pretraining Task with `pretraining.model_task` (BERT-base: MLM +
NSP; modern_base: MLM only) from bert_jax/configs/pretrain.py, the train step exactly as
`train.run` does (`train.abstract_train_state`, `train.make_train_step`, jit with the state's
shardings and donation), and times it on the same synthetic batch (all tokens real, the
config's masked-positions count). FLOPs per token come from XLA's cost analysis of each
compiled step (the same counter for both families) and, for BERT, from bert_jax.flops too.
The families are interleaved A/B per repetition so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from benchmarks import bert_jax_step, synthetic
from bert_jax import optim, pretraining, sharding, train

# (family variant, batch, seq): BERT-base and modern_base at the two lengths.
ROWS = {128: 8, 512: 2}
VARIANTS = {"bert": "base", "modern": "modern_base"}


def build(variant: str, batch_size: int, seq_len: int, vocab_size: int = 30522):
  config = bert_jax_step.load_config(variant)
  max_predictions = max(1, round(seq_len * 0.15))  # Both families predict 15% of the tokens.
  config.data.update(seq_len=seq_len, max_predictions=max_predictions)
  config.model.update(dtype="bfloat16", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  config.train.batch_size = batch_size
  task = pretraining.model_task(config, vocab_size)
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = optim.create_optimizer(config.optimizer, config.train.num_steps)
  graphdef, _, shardings = train.abstract_train_state(task, tx, mesh)
  host = synthetic.pretraining_batch(batch_size, seq_len, max_predictions, vocab_size)
  with jax.set_mesh(mesh):
    state = train.init_train_state(task, tx, shardings, 0)
    step = jax.jit(train.make_train_step(graphdef, task.loss_fn, tx, schedule),
                   in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                   donate_argnums=0)
    batch = train.to_global(host, mesh)
    rng = jax.random.key(0)
    compiled = step.lower(state, batch, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return dict(compiled=compiled, state=state, batch=batch, rng=rng, mesh=mesh, task=task,
              xla_flops=float(cost.get("flops", 0.0)), params=train.param_count(state.params))


def time_steps(b: dict, n: int) -> list[float]:
  out = []
  with jax.set_mesh(b["mesh"]):
    for _ in range(n):
      t0 = time.perf_counter()
      b["state"], metrics = b["compiled"](b["state"], b["batch"], b["rng"])
      jax.block_until_ready((b["state"], metrics))
      out.append(time.perf_counter() - t0)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", default="128,512", help="Sequence lengths (batch: 8 at 128, 2 at 512).")
  ap.add_argument("--steps", type=int, default=5, help="Timed steps per family per repetition.")
  ap.add_argument("--reps", type=int, default=2, help="A/B repetitions.")
  ap.add_argument("--json", default="", help="Also write the rows to this file.")
  args = ap.parse_args()
  rows = []
  for seq_len in (int(s) for s in args.rows.split(",")):
    batch_size = ROWS.get(seq_len, 2)
    built = {f: build(v, batch_size, seq_len) for f, v in VARIANTS.items()}
    for b in built.values():
      time_steps(b, 2)  # Warm-up.
    times = {f: [] for f in built}
    for _ in range(args.reps):
      for f, b in built.items():
        times[f] += time_steps(b, args.steps)
    tokens = batch_size * seq_len
    for f, b in built.items():
      med = float(np.median(times[f]))
      row = dict(family=f, variant=VARIANTS[f], batch_size=batch_size, seq_len=seq_len,
                 params=b["params"], median_step_s=round(med, 4),
                 tokens_per_s=round(tokens / med, 1),
                 xla_flops_per_token=round(b["xla_flops"] / tokens),
                 analytic_flops_per_token=round(b["task"].flops_per_example / seq_len),
                 achieved_gflops=round(b["xla_flops"] / med / 1e9, 1))
      rows.append(row)
      print(json.dumps(row), flush=True)
    ratio = np.median(times["bert"]) / np.median(times["modern"])
    print(f"seq {seq_len}: modern_base step time is {1 / ratio:.2f}x BERT-base's", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
