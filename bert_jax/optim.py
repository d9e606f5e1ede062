"""Optimisers and learning-rate schedules as BERT trains them (optax).

AdamW or LAMB with BERT's weight-decay mask (no decay on LayerNorm parameters and biases),
linear warm-up then linear or polynomial decay, or warmup-stable-decay (WSD: the peak until the
last `decay_fraction` of the steps, then a linear or 1-sqrt decay, Hu et al. 2024 / Hägele et al.
2024), and global-norm clipping. Gradient accumulation lives in the train step (train.py), not
here, so one micro-batch's activations are in memory.

A wall-clock run (train.num_steps=0 with train.max_train_seconds) learns num_steps from its
measured step time (`wall_clock_steps`); until then it trains inside the warm-up, whose learning
rates do not depend on num_steps (`steps_before_num_steps_matters`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from bert_jax import fused_adamw
from bert_jax.errors import ConfigError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "polynomial", "constant", "wsd")
DECAY_SHAPES = ("linear", "1-sqrt", "cosine")  # WSD's decay phase


def _decay_left(shape: str, t):
  """The share of (peak - end) left at progress t in [0, 1] through a decay of `shape`."""
  if shape == "1-sqrt":
    return 1.0 - jnp.sqrt(t)
  if shape == "cosine":
    return 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  return 1.0 - t


def learning_rate_schedule(cfg, num_steps) -> optax.Schedule:
  """Linear warm-up to `cfg.learning_rate`, then decay to `cfg.end_learning_rate` at num_steps
  (WSD: the decay takes the last `cfg.decay_fraction` of num_steps).

  `num_steps` may be a traced scalar: a wall-clock run passes it to its one compiled train step,
  so fixing it mid-run costs no recompile.
  """
  warmup = int(cfg.warmup_steps)
  peak, end = float(cfg.learning_rate), float(cfg.get("end_learning_rate", 0.0))
  kind = cfg.schedule

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    n = jnp.asarray(num_steps, jnp.float32)
    if kind == "constant":
      after = jnp.full_like(count, peak)
    elif kind == "wsd":  # the peak until the decay's last decay_fraction of the steps
      decay_steps = jnp.maximum(jnp.round(float(cfg.decay_fraction) * n), 1.0)
      t = jnp.clip((count - jnp.maximum(n - decay_steps, warmup)) / decay_steps, 0.0, 1.0)
      after = end + (peak - end) * _decay_left(cfg.get("decay_shape", "linear"), t)
    else:  # linear / polynomial from the end of the warm-up to num_steps
      decay_steps = jnp.maximum(n - warmup, 1.0)
      t = jnp.clip(count - warmup, 0.0, decay_steps) / decay_steps
      power = 1.0 if kind == "linear" else float(cfg.power)
      after = (peak - end) * (1.0 - t) ** power + end
    if warmup == 0:
      return after
    return jnp.where(count < warmup, peak * count / warmup, after)

  return schedule


def decay_mask(params):
  """True where weight decay applies: not LayerNorm parameters, not biases, not a contrastive
  loss's learnable logit scale."""

  def wants_decay(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not (names[-1] in ("bias", "logit_scale") or "LayerNorm" in names)

  return jax.tree_util.tree_map_with_path(wants_decay, params)


def validate(cfg) -> None:
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optimizer.name {cfg.name!r} is not one of {OPTIMIZERS}.")
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"optimizer.schedule {cfg.schedule!r} is not one of {SCHEDULES}.")
  if not cfg.learning_rate > 0:
    raise ConfigError(f"optimizer.learning_rate must be positive, got {cfg.learning_rate}.")
  if cfg.weight_decay < 0:
    raise ConfigError(f"optimizer.weight_decay must be >= 0, got {cfg.weight_decay}.")
  if cfg.warmup_steps < 0:
    raise ConfigError(f"optimizer.warmup_steps must be >= 0, got {cfg.warmup_steps}.")
  if cfg.grad_accum_steps < 1:
    raise ConfigError(f"optimizer.grad_accum_steps must be >= 1, got {cfg.grad_accum_steps}.")
  if cfg.schedule == "wsd":
    if not 0.0 < cfg.get("decay_fraction", 0.0) <= 1.0:
      raise ConfigError(f"optimizer.decay_fraction={cfg.get('decay_fraction')} must be in (0, 1] "
                        f"(the share of the steps WSD spends decaying, e.g. 0.2).")
    if cfg.get("decay_shape", "linear") not in DECAY_SHAPES:
      raise ConfigError(f"optimizer.decay_shape {cfg.decay_shape!r} is not one of "
                        f"{DECAY_SHAPES}.")


def steps_before_num_steps_matters(cfg) -> float:
  """How many leading steps have learning rates independent of num_steps (the warm-up; all of
  them for a constant schedule): a wall-clock run must fix num_steps within them."""
  return math.inf if cfg.schedule == "constant" else int(cfg.warmup_steps)


def wall_clock_steps(step: int, elapsed_s: float, budget_s: float, step_s: float,
                     overhead_s: float = 0.0, margin: float = 0.97) -> int:
  """The total step count that ends a run's schedule as its time budget runs out.

  Args:
    step: steps done so far; elapsed_s: seconds of the budget spent so far.
    step_s: measured seconds per step; overhead_s: one-off costs still to come (a recompile).
    margin: the share of the remaining time planned for steps (step times wander).
  """
  left = max(budget_s - elapsed_s - overhead_s, 0.0) * margin
  return step + max(int(left / step_s), 1)


class AdamW(optax.GradientTransformation):
  """optax's chain(clip_by_global_norm, adamw) (its init and update), carrying `fused`: the
  hyperparameters `apply_gradients` needs to run the step as one CPU kernel pass per parameter
  (bert_jax.fused_adamw). Anything that wraps it (freeze, optax.masked) gets optax's path."""
  fused: fused_adamw.Spec


def create_optimizer(cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer described by the config's `optimizer` section, and its schedule."""
  validate(cfg)
  schedule = learning_rate_schedule(cfg, num_steps)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  if cfg.name == "lamb":
    return optax.chain(*parts, optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                          weight_decay=cfg.weight_decay, mask=decay_mask)), schedule
  tx = optax.chain(*parts, optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                       weight_decay=cfg.weight_decay, mask=decay_mask))
  if cfg.clip_norm > 0:  # fused_adamw is optax's arithmetic bit for bit only with the clipping
    tx = AdamW(*tx)
    tx.fused = fused_adamw.Spec(schedule, float(cfg.b1), float(cfg.b2), float(cfg.eps),
                                float(cfg.weight_decay), decay_mask, float(cfg.clip_norm))
  return tx, schedule


def apply_gradients(tx: optax.GradientTransformation, grads, opt_state, params):
  """(new params, new opt_state): `tx.update` then `optax.apply_updates`, or for
  create_optimizer's AdamW on one CPU device the same arithmetic as one fused kernel pass per
  parameter (fused_adamw: 7 arrays of memory traffic per element instead of 11)."""
  if isinstance(tx, AdamW) and fused_adamw.usable(params):
    return fused_adamw.apply(tx.fused, grads, opt_state, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...]
           ) -> optax.GradientTransformation:
  """`tx` for every top-level parameter subtree but those named in `frozen`, which get zero
  updates (no weight decay, no optimizer state, no share in the clipping norm)."""
  if not frozen:
    return tx

  def mask(train: bool):
    return lambda params: {k: jax.tree.map(lambda _, k=k: (k in frozen) != train, v)
                           for k, v in params.items()}

  return optax.chain(optax.masked(tx, mask(True)), optax.masked(optax.set_to_zero(), mask(False)))
