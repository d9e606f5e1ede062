"""Process CPU seconds per fine-tuning epoch on polarity, length buckets vs rows padded to 128.

    python -m benchmarks.finetune_cpu_ab [--widths=32,64,128] [--steps=3] [--out=FILE]

A figure that does not need the measurement lock: CPU time (user + system of this process, all
XLA threads) is what a step costs whatever else runs on the machine, so it can be measured at
nice 19 on a shared host (wall-clock time cannot). The one jitted train step of
bert_jax.train (all-MiniLM-L6-v2, batch 32, the finetune_throughput recipe) runs `--steps`
timed steps (after one compiling step) on real polarity rows at each width in `--widths`.
cost(width) is measured at those widths and fitted as a + b * width for the others (the
points are reported, so the fit can be checked);
an epoch costs sum(cost(width of batch i)) over the 100 batches of the bucketed epoch 0
(common.EpochIterator, seed 0) against 100 * cost(128) padded.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.finetune_throughput import bert_jax_config, cpu_seconds  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--widths", default="32,64,128")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", default=str(REPO / "benchmarks" / "finetune_cpu_ab.json"))
  a = p.parse_args()
  import jax
  import numpy as np

  from bert_jax import finetune, optim, sharding, train
  from bert_jax.tasks import buckets as buckets_lib
  from bert_jax.tasks import common
  config = bert_jax_config(1.0, "auto")
  with tempfile.TemporaryDirectory() as workdir:
    task, config, data = finetune.make_task(config, workdir)
  arrays = data.train_arrays
  lengths = buckets_lib.row_lengths(arrays)
  full = arrays["input_ids"].shape[1]
  it = common.EpochIterator(arrays, 32, config.train.seed, buckets=data.length_buckets)
  epoch_widths = [next(it)["input_ids"].shape[1] for _ in range(len(lengths) // 32)]
  results = {"command": " ".join(sys.argv), "epoch_widths": epoch_widths, "points": {},
             "loadavg_before": os.getloadavg(), "nice": os.nice(0)}
  with sharding.use_rules(sharding.rules_of(config.mesh)):
    mesh = sharding.make_mesh(dict(config.mesh))
    tx, schedule = optim.create_optimizer(config.optimizer, config.train.num_steps)
    graphdef, _, shardings = train.abstract_train_state(task, tx, mesh, seed=0)
    with jax.set_mesh(mesh):
      state = train.init_train_state(task, tx, shardings, 0, task.init_params())
      step = train.jit_train_step(task, config, graphdef, tx, schedule, shardings)
      rng = jax.random.key(0)
      for width in [int(w) for w in a.widths.split(",")]:
        # Real rows that fit this width, the longest first (a batch that needs it).
        fit = np.nonzero(lengths <= width)[0]
        rows = fit[np.argsort(-lengths[fit], kind="stable")][:32]
        batch = train.to_global(buckets_lib.cut(arrays, rows, width, full), mesh)
        state, m = step(state, batch, rng)  # compiles
        jax.block_until_ready(m)
        c0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(a.steps):
          state, m = step(state, batch, rng)
          jax.block_until_ready(m)
        cost = (cpu_seconds() - c0) / a.steps
        results["points"][width] = {"cpu_s_per_step": cost,
                                    "wall_s_per_step": (time.perf_counter() - t0) / a.steps}
        print(width, results["points"][width], flush=True)
        pathlib.Path(a.out).write_text(json.dumps(results, indent=2))
  ws = np.asarray(sorted(results["points"]), float)
  cs = np.asarray([results["points"][int(w)]["cpu_s_per_step"] for w in ws])
  b, c = np.polyfit(ws, cs, 1)
  measured = {int(w): float(x) for w, x in zip(ws, cs, strict=True)}
  cost = lambda w: measured.get(int(w), c + b * w)  # measured where it was, else the fit
  bucketed = float(sum(cost(w) for w in epoch_widths))
  padded = float(len(epoch_widths) * cost(full))
  results.update(fit={"a": float(c), "b_per_token_column": float(b)},
                 cpu_s_per_epoch={"bucketed": bucketed, "padded": padded},
                 ratio=padded / bucketed, loadavg_after=os.getloadavg())
  pathlib.Path(a.out).write_text(json.dumps(results, indent=2))
  print(json.dumps({k: results[k] for k in ("fit", "cpu_s_per_epoch", "ratio")}))


if __name__ == "__main__":
  main()
