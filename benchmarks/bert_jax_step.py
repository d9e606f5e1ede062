"""Times one bert_jax pretraining step exactly as `train._run_locked` builds and runs it.

The state comes from `train.abstract_train_state` / `train.init_train_state`, the step from
`train.make_train_step` with `pretraining.pretraining_loss`, jitted with the train state's
shardings and `donate_argnums=0`; the optimizer is `optim.create_optimizer` of the config's
`optimizer` section (AdamW with BERT's decay mask and global-norm clipping).
"""
from __future__ import annotations

import importlib.util
import os
import re
import time

import jax
import numpy as np

from benchmarks import synthetic
from bert_jax import flops as flops_lib
from bert_jax import optim, sharding, train
from bert_jax.heads import BertForPreTraining
from bert_jax.pretraining import bert_config_from, pretraining_loss

_CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs", "pretrain.py")


def load_config(variant: str = "base"):
  spec = importlib.util.spec_from_file_location("pretrain_config", _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def bench_config(preset: str, batch_size: int, seq_len: int, max_predictions: int, dtype: str,
                 attention_impl: str = "auto", dropout: float = 0.1):
  """configs/pretrain.py:base with the model and batch of one benchmark row."""
  c = load_config("base")
  c.model.update(preset=preset, dtype=dtype, attention_impl=attention_impl,
                 hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  c.data.update(seq_len=seq_len, max_predictions=max_predictions)
  c.train.batch_size = batch_size
  return c


def prepare(config, vocab_size: int = 30522, seed: int = 0) -> dict:
  """The jitted train step, its initial state, a device batch, rng and mesh, as
  `train._run_locked` builds them; not yet compiled (tests trace it for other backends)."""
  d = config.data
  bert_config = bert_config_from(config.model, vocab_size)
  task = train.Task(name="pretraining",
                    model_factory=lambda rngs: BertForPreTraining(bert_config, rngs=rngs),
                    loss_fn=pretraining_loss, train_iter=lambda: iter(()))
  mesh = sharding.make_mesh(dict(config.mesh))
  train.validate_batch(config, mesh)
  tx, schedule = optim.create_optimizer(config.optimizer, config.train.num_steps)
  graphdef, _, shardings = train.abstract_train_state(task, tx, mesh, seed=seed)
  host = synthetic.pretraining_batch(config.train.batch_size, d.seq_len, d.max_predictions,
                                     vocab_size, seed=seed)
  with jax.set_mesh(mesh):
    state = train.init_train_state(task, tx, shardings, seed)
    step_fn = jax.jit(
        train.make_train_step(graphdef, pretraining_loss, tx, schedule,
                              accum_steps=config.optimizer.grad_accum_steps),
        in_shardings=(shardings, None, None), out_shardings=(shardings, None),
        donate_argnums=0)
    batch = train.to_global(host, mesh)
  return dict(step_fn=step_fn, state=state, batch=batch, rng=jax.random.key(seed), mesh=mesh,
              bert_config=bert_config)


def build(config, vocab_size: int = 30522, seed: int = 0, compiler_options: dict | None = None):
  """`prepare`, compiled: the step, its initial state and a device batch.

  `compiler_options`: XLA debug options for this one compile (A/B runs of XLA flags in one
  process, e.g. {"xla_cpu_use_multi_output_fusion": True}).
  """
  p = prepare(config, vocab_size, seed)
  with jax.set_mesh(p["mesh"]):
    t0 = time.perf_counter()
    compiled = p["step_fn"].lower(p["state"], p["batch"], p["rng"]).compile(
        compiler_options=compiler_options)
    compile_s = time.perf_counter() - t0
  return dict(compiled=compiled, state=p["state"], batch=p["batch"], rng=p["rng"],
              mesh=p["mesh"], bert_config=p["bert_config"], compile_s=compile_s,
              step_bytes=step_bytes(compiled))


def step_bytes(compiled) -> int | None:
  """Device memory of one step: arguments + temporaries + outputs not aliased to (donated)
  arguments, from XLA's memory analysis; None where the backend gives none."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)
  except (AttributeError, TypeError, NotImplementedError):
    return None


def run_steps(built: dict, n: int) -> tuple[list[float], list[float]]:
  """Runs n steps (state donated and replaced in `built`); returns step seconds and losses."""
  times, losses = [], []
  compiled, batch, rng = built["compiled"], built["batch"], built["rng"]
  with jax.set_mesh(built["mesh"]):
    for _ in range(n):
      t0 = time.perf_counter()
      built["state"], metrics = compiled(built["state"], batch, rng)
      jax.block_until_ready((built["state"], metrics))
      times.append(time.perf_counter() - t0)
      losses.append(float(metrics["loss"][0]))
  return times, losses


def custom_calls(compiled) -> list[str]:
  """The custom-call targets in a compiled step's HLO (e.g. cuDNN's fused attention), so a run
  records which kernels it really used rather than the one it asked for."""
  return sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text())))


def measure(config, vocab_size: int = 30522, steps: int = 7, warmup: int = 2,
            seed: int = 0, with_custom_calls: bool = False) -> dict:
  """Compiles, runs `warmup` steps, then times `steps` steps; returns the figures."""
  built = build(config, vocab_size, seed)
  _, warm_losses = run_steps(built, warmup)
  times, losses = run_steps(built, steps)
  losses = warm_losses + losses
  d = config.data
  bert_config = built["bert_config"]
  b, l = config.train.batch_size, d.seq_len
  out = synthetic.stats(times)
  flops = flops_lib.train_flops_per_step(bert_config, b, l, d.max_predictions)
  out.update(
      name="bert_jax", preset=config.model.preset, dtype=bert_config.dtype,  # "auto" resolved
      attention_impl=config.model.attention_impl, batch_size=b, seq_len=l,
      max_predictions=d.max_predictions, compile_s=built["compile_s"],
      step_bytes=built["step_bytes"],
      tokens_per_s=b * l / out["median_s"], model_flops=flops, executed_flops=flops,
      params=train.param_count(built["state"].params),
      first_loss=losses[0], last_loss=losses[-1],
      losses_finite=bool(np.all(np.isfinite(losses))))
  if with_custom_calls:
    out["custom_calls"] = custom_calls(built["compiled"])
  return out
