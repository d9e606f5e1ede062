"""The fused AdamW step (bert_jax.fused_adamw, bert_jax/kernels/adamw.cc): on one CPU device the
pretraining step runs it, and what it computes is optax's chain(clip_by_global_norm, adamw) then
apply_updates bit for bit: on real Bible batches through the tiny model's train step, and on a
tree with decayed and undecayed leaves over steps that clip and steps that do not."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import run_train_steps

from bert_jax import fused_adamw, onednn, optim, pretraining, sharding, train
from bert_jax.configs import pretrain as pretrain_configs

REASON = onednn.unavailable_reason()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"CPU kernel library unavailable: {REASON}")
_USABLE = fused_adamw.usable


def _optimizer_config(clip_norm=1.0, name="adamw"):
  return ml_collections.ConfigDict(dict(
      name=name, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
      clip_norm=clip_norm, warmup_steps=2, schedule="linear", end_learning_rate=0.0, power=1.0,
      decay_fraction=0.2, decay_shape="linear", grad_accum_steps=1))


def _train(config, batches, fused: bool, monkeypatch):
  """The initial parameters, the state after the train step `run` executes went over
  `batches`, the last step's gradient norm and the step's compiled HLO."""
  monkeypatch.setattr(fused_adamw, "usable", _USABLE if fused else lambda params: False)
  initial, state, metrics, hlo = run_train_steps(config, batches)
  return initial, state, metrics[-1][1], hlo


def test_pretraining_step_is_optax_bit_for_bit(pretrain_dataset, vocab_path, monkeypatch):
  config = pretrain_configs.get_config("tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path))
  config.optimizer.update(warmup_steps=1, clip_norm=1.0)
  it = pretraining.make_task(config).train_iter()
  batches = [next(it) for _ in range(3)]
  initial, fused, fused_norm, fused_hlo = _train(config, batches, True, monkeypatch)
  _, plain, plain_norm, plain_hlo = _train(config, batches, False, monkeypatch)
  assert onednn.ADAMW_TARGET in fused_hlo and onednn.ADAMW_TARGET not in plain_hlo
  assert fused_norm == plain_norm > 0
  assert int(fused.step) == 3
  leaves = zip(jax.tree_util.tree_leaves_with_path(fused), jax.tree.leaves(plain), strict=True)
  for (path, a), b in leaves:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial),
                                                    jax.tree.leaves(fused.params), strict=True)]
  assert all(moved), "every parameter takes a step"


def test_clipping_and_decay_mask_over_steps_bit_for_bit():
  tx, _ = optim.create_optimizer(_optimizer_config(), 20)
  assert isinstance(tx, optim.AdamW)
  keys = jax.random.split(jax.random.key(0), 3)
  # Decayed (kernel, 300 x 700: several kernel pieces) and undecayed (bias, LayerNorm) leaves.
  params = {"layer": {"kernel": jax.random.normal(keys[0], (300, 700)),
                      "bias": jax.random.normal(keys[1], (700,))},
            "LayerNorm": {"scale": jnp.ones(64)}}

  def reference(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  reference = jax.jit(reference)
  fused = jax.jit(lambda grads, state, params: fused_adamw.apply(tx.fused, grads, state, params))
  p_ref = p_fused = params
  s_ref = s_fused = tx.init(params)
  for i in range(5):
    scale = 3.0 if i % 2 == 0 else 1e-3  # the global norm far above 1 (clipped), then below
    key = jax.random.fold_in(keys[2], i)
    grads = jax.tree.map(lambda x, k=key, s=scale: s * jax.random.normal(k, x.shape), params)
    p_ref, s_ref = reference(grads, s_ref, p_ref)
    p_fused, s_fused = fused(grads, s_fused, p_fused)
    assert jax.tree.structure(s_fused) == jax.tree.structure(s_ref)
    for a, b in zip(jax.tree.leaves((p_fused, s_fused)), jax.tree.leaves((p_ref, s_ref)),
                    strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"step {i}")
  assert not np.array_equal(np.asarray(p_fused["layer"]["kernel"]),
                            np.asarray(params["layer"]["kernel"]))
  assert onednn.ADAMW_TARGET in fused.lower(grads, s_fused, p_fused).as_text()


def test_which_optimizers_and_devices_take_the_fused_path(monkeypatch):
  params = {"w": jnp.ones((4, 4))}
  assert isinstance(optim.create_optimizer(_optimizer_config(), 10)[0], optim.AdamW)
  # Without clipping XLA rounds the second moment another way; LAMB is another optimizer;
  # freezing wraps the chain in optax.masked (another state): optax's path for all three.
  assert not isinstance(optim.create_optimizer(_optimizer_config(clip_norm=0.0), 10)[0],
                        optim.AdamW)
  assert not isinstance(optim.create_optimizer(_optimizer_config(name="lamb"), 10)[0],
                        optim.AdamW)
  tx, _ = optim.create_optimizer(_optimizer_config(), 10)
  assert not isinstance(optim.freeze(tx, ("w",)), optim.AdamW)
  assert fused_adamw.usable(params)
  assert not fused_adamw.usable({"w": jnp.ones((4, 4), jnp.bfloat16)})
  monkeypatch.setenv(onednn.ENV, "off")
  assert not fused_adamw.usable(params)


def test_a_skipped_nonfinite_step_keeps_the_state(pretrain_dataset, vocab_path):
  """train.skip_nonfinite with the fused update writing in place: a step whose loss is infinite
  leaves parameters and optimizer state as they were (XLA copies what the select still needs)."""
  config = pretrain_configs.get_config("tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path))
  config.optimizer.update(warmup_steps=1)
  task = pretraining.make_task(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  tx, schedule = optim.create_optimizer(config.optimizer, config.train.num_steps)
  graphdef, _, shardings = train.abstract_train_state(task, tx, mesh, seed=0)

  def loss_fn(model, batch, rng):  # the pretraining loss times batch["scale"]
    loss, metrics = task.loss_fn(model, {k: v for k, v in batch.items() if k != "scale"}, rng)
    return loss * batch["scale"], metrics

  batch = next(task.train_iter())
  with jax.set_mesh(mesh):
    state = train.init_train_state(task, tx, shardings, 0)
    step = jax.jit(train.make_train_step(graphdef, loss_fn, tx, schedule, skip_nonfinite=True),
                   donate_argnums=0)
    state, _ = step(state, {**batch, "scale": jnp.float32(1.0)}, jax.random.key(0))
    assert onednn.ADAMW_TARGET in step.lower(state, {**batch, "scale": jnp.float32(1.0)},
                                             jax.random.key(0)).as_text()
    before = jax.device_get(state)
    state, metrics = step(state, {**batch, "scale": jnp.float32(np.inf)}, jax.random.key(1))
    after = jax.device_get(state)
  assert float(metrics["skipped_steps"][0]) == 1.0 and int(after.step) == 2
  for a, b in zip(jax.tree.leaves((before.params, before.opt_state)),
                  jax.tree.leaves((after.params, after.opt_state)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
