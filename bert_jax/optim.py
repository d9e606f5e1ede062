"""Optimisers and learning-rate schedules as BERT trains them (optax).

AdamW or LAMB with BERT's weight-decay mask (no decay on LayerNorm parameters and biases),
linear warm-up then linear or polynomial decay, and global-norm clipping. Gradient accumulation
lives in the train step (train.py), not here, so one micro-batch's activations are in memory.
"""
from __future__ import annotations

import jax
import optax

from bert_jax.errors import ConfigError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "polynomial", "constant")


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Linear warm-up to `cfg.learning_rate`, then decay to `cfg.end_learning_rate` at num_steps."""
  warmup = int(cfg.warmup_steps)
  peak, end = float(cfg.learning_rate), float(cfg.get("end_learning_rate", 0.0))
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    power = 1.0 if cfg.schedule == "linear" else float(cfg.power)
    decay = optax.polynomial_schedule(peak, end, power, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


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


def create_optimizer(cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer described by the config's `optimizer` section, and its schedule."""
  validate(cfg)
  schedule = learning_rate_schedule(cfg, num_steps)
  if cfg.name == "adamw":
    core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)
  else:
    core = optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  return optax.chain(*parts, core), schedule


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
