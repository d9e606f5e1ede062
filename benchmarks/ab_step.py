"""Interleaved A/B of the bert_jax pretraining step: XLA:CPU compile options, and the
"bf16 copy of the kernels in the state" experiment, in one process (same minutes).

  .venv/bin/python -m benchmarks.ab_step --preset=base --rounds=7 \
      --variants='{"fastrt": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}}'

Every variant is compiled first (the baseline `base` always runs: the step exactly as
`train._run_locked` builds it, benchmarks/bert_jax_step.py), then each round times one step of
each variant in turn; the medians are printed and, with --json, written with `uptime`.

`--bf16_copy` adds the experiment of issue 21: the state carries a bf16 copy of every Dense
kernel, made from the new f32 weights at the end of the update, and the forward reads it (a
custom VJP hands the f32 cotangent to the f32 master weight, so the losses are bitwise those of
the baseline). It is not in train.py: on XLA:CPU the copy is a fusion of its own after AdamW's
(no multi-output fusion), so it moves the f32 -> bf16 converts instead of removing them
(benchmarks/RESULTS.md, issue 21).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "base", "Model size (configuration.PRESETS).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds (one step of every variant each).")
_VARIANTS = flags.DEFINE_string("variants", "{}", "JSON {name: {xla compile option: value}}.")
_BF16_COPY = flags.DEFINE_bool("bf16_copy", False, "Also run the bf16-kernel-copy experiment.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "bfloat16", "float32"],
                           "Matmul input dtype (auto: bf16 where native, else f32).")
_JSON = flags.DEFINE_string("json", "", "Write the step times here.")


def _bf16_copy_runner(config):
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from benchmarks import bert_jax_step
  from bert_jax import optim, train
  from bert_jax.heads import BertForPreTraining
  from bert_jax.pretraining import pretraining_loss

  @jax.custom_vjp
  def precast(p, c):  # The f32 value of the bf16 copy; XLA folds convert(convert(c)) to c.
    return c.astype(p.dtype)

  precast.defvjp(lambda p, c: (c.astype(p.dtype), c),
                 lambda c, g: (g, jnp.zeros(c.shape, c.dtype)))
  key = jax.tree_util.keystr
  is_kernel = lambda path: str(getattr(path[-1], "key", path[-1])) == "kernel"

  def copies_of(params):
    return {key(p): v.astype(jnp.bfloat16)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0] if is_kernel(p)}

  built = bert_jax_step.build(config)  # Its state, batch and mesh.
  graphdef = nnx.split(nnx.eval_shape(
      lambda: BertForPreTraining(built["bert_config"], rngs=nnx.Rngs(params=0))))[0]
  tx, _ = optim.create_optimizer(config.optimizer, config.train.num_steps)

  def loss(params, copies, batch, rng):
    merged = jax.tree_util.tree_map_with_path(
        lambda p, v: precast(v, copies[key(p)]) if is_kernel(p) else v, params)
    return pretraining_loss(nnx.merge(graphdef, merged), batch, rng)

  grad = jax.value_and_grad(loss, has_aux=True)

  def step(state, batch, rng):
    st, copies = state
    (l, _), g = grad(st.params, copies, batch, jax.random.fold_in(rng, st.step))
    updates, opt_state = tx.update(g, st.opt_state, st.params)
    params = optax.apply_updates(st.params, updates)
    return (train.TrainState(st.step + 1, params, opt_state), copies_of(params)), l

  with jax.set_mesh(built["mesh"]):
    state = [(built["state"], jax.jit(copies_of)(built["state"].params))]
    compiled = jax.jit(step, donate_argnums=0).lower(state[0], built["batch"],
                                                      built["rng"]).compile()

  def run(n):
    times = []
    with jax.set_mesh(built["mesh"]):
      for _ in range(n):
        t0 = time.perf_counter()
        state[0], l = compiled(state[0], built["batch"], built["rng"])
        jax.block_until_ready((state[0], l))
        times.append(time.perf_counter() - t0)
    return times

  return run


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options are --flags.")
  try:
    variants = {"base": {}, **json.loads(_VARIANTS.value)}
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--variants is not JSON ({e}); e.g. '{{\"fastrt\": "
                         f"{{\"xla_cpu_opt_preset\": \"CPU_OPT_PRESET_FAST_RUNTIME\"}}}}'"
                         ) from None
  import numpy as np

  from benchmarks import bert_jax_step
  config = bert_jax_step.bench_config(_PRESET.value, 8, 128, 20, _DTYPE.value)
  runners = {}
  for name, options in variants.items():
    built = bert_jax_step.build(config, compiler_options=options or None)
    runners[name] = lambda n, b=built: bert_jax_step.run_steps(b, n)[0]
  if _BF16_COPY.value:
    runners["bf16_copy"] = _bf16_copy_runner(config)
  for run in runners.values():
    run(2)
  out = {"uptime_start": os.popen("uptime").read().strip(), "variants": variants,
         "times": {n: [] for n in runners}}
  for r in range(_ROUNDS.value):
    for n, run in runners.items():
      out["times"][n] += run(1)
    print(r, {n: round(1e3 * t[-1]) for n, t in out["times"].items()}, flush=True)
  out["uptime_end"] = os.popen("uptime").read().strip()
  for n, t in out["times"].items():
    print(f"{n:14s} median {1e3 * np.median(t):7.0f} ms   min {1e3 * min(t):7.0f} ms")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
