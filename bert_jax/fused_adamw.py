"""AdamW's update and its application in one pass per parameter on CPU (bert_jax/kernels/adamw.cc).

optax's `chain(clip_by_global_norm, adamw)` then `optax.apply_updates` is, on XLA:CPU, three
loops over every parameter (XLA:CPU has no multi-output fusion: the new first moment, the new
second moment and the new parameter are separate fusions, each re-reading what it needs): 11
arrays of the parameter's size read or written per step. The kernel reads the gradient, both
moments and the parameter once and writes the three results in place (input/output aliases):
7. With BERT-base's 110M f32 parameters that is ~1.8 GB less memory traffic a step: the update
~180 -> ~89 ms, the 8 x 128 training step ~3% faster (RESULTS.md run Y). The arithmetic is
optax's with the roundings XLA:CPU gives it, so the results are bit for bit the same
(tests/test_fused_adamw.py); the state keeps optax's structure, so checkpoints and `tx.update`
do not know which path ran.

`Spec` is what `optim.create_optimizer` attaches to the AdamW it builds; `optim.apply_gradients`
takes this path where `usable()`: f32 parameters and moments compiled for one CPU device with
bert_jax's CPU kernel library loaded (BERT_JAX_ONEDNN=off keeps optax's XLA loops).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax import layers, onednn
from bert_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Spec:
  """The hyperparameters of `optax.chain(clip_by_global_norm(clip_norm), adamw(schedule, b1,
  b2, eps, weight_decay=weight_decay, mask=decay_mask))`, clip_norm > 0 (without the clipping
  select XLA rounds the second moment differently: the kernel is optax's bit for bit only with
  it)."""
  schedule: Callable
  b1: float
  b2: float
  eps: float
  weight_decay: float
  decay_mask: Callable
  clip_norm: float


def usable(params) -> bool:
  """Whether the fused step runs for `params` here: every leaf f32 and the f32 CPU kernels on
  (compiled for the CPU, one device, the library loaded: layers.f32_on_onednn)."""
  return all(layers.f32_on_onednn(jnp.result_type(p)) for p in jax.tree.leaves(params))


def _split_state(opt_state):
  """(clip state, ScaleByAdamState, decay-mask state, ScaleByScheduleState)."""
  clip_state, (adam, masked, schedule) = opt_state
  if not (isinstance(adam, optax.ScaleByAdamState)
          and isinstance(schedule, optax.ScaleByScheduleState)):
    raise TypeError(f"not the state of optim.create_optimizer's AdamW: {type(opt_state)}")
  return clip_state, adam, masked, schedule


def apply(spec: Spec, grads, opt_state, params):
  """(new params, new opt_state): what `tx.update` then `optax.apply_updates` return for the
  AdamW `spec` describes, one kernel call per parameter."""
  reason = onednn.unavailable_reason()  # builds and registers the kernel on first use
  if reason:
    raise ConfigError(f"the fused AdamW kernel cannot be used: {reason}.")
  clip_state, adam, masked, sched = _split_state(opt_state)
  # The scalars exactly as optax computes them (clip_by_global_norm, scale_by_adam's bias
  # corrections, scale_by_learning_rate's -schedule(count)).
  norm = optax.tree.norm(grads)
  clip = jnp.logical_not(norm < spec.clip_norm)
  count = optax.safe_increment(adam.count)
  bc1 = 1 - spec.b1 ** count
  bc2 = 1 - spec.b2 ** count
  step_size = -1 * spec.schedule(sched.count)
  scalars = jnp.stack([clip.astype(jnp.float32), norm.astype(jnp.float32),
                       jnp.asarray(bc1, jnp.float32), jnp.asarray(bc2, jnp.float32),
                       jnp.asarray(step_size, jnp.float32)])
  decayed = spec.decay_mask(params)
  f32 = np.float32

  def one(g, mu, nu, p, decay):
    shape = jax.ShapeDtypeStruct(p.shape, jnp.float32)
    call = jax.ffi.ffi_call(onednn.ADAMW_TARGET, (shape, shape, shape),
                            input_output_aliases={1: 0, 2: 1, 3: 2})
    return call(g, mu, nu, p, scalars, b1=f32(spec.b1), one_minus_b1=f32(1 - spec.b1),
                b2=f32(spec.b2), one_minus_b2=f32(1 - spec.b2), eps=f32(spec.eps),
                weight_decay=f32(spec.weight_decay if decay else 0.0),
                max_norm=f32(spec.clip_norm))

  out = jax.tree.map(one, grads, adam.mu, adam.nu, params, decayed)
  is_triple = lambda x: isinstance(x, tuple)
  mu, nu, new_params = (jax.tree.map(lambda t, i=i: t[i], out, is_leaf=is_triple)
                        for i in range(3))
  state = (optax.ScaleByAdamState(count=count, mu=mu, nu=nu), masked,
           optax.ScaleByScheduleState(count=optax.safe_increment(sched.count)))
  return new_params, (clip_state, state)
