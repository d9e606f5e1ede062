"""optim: BERT's weight-decay mask on the real model's parameters, the schedules' end points for
every schedule option, and the mask reaching the optimizers' updates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from bert_jax import optim
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.configuration import preset
from bert_jax.heads import BertForPreTraining


def _params():
  """The tiny pretraining model's parameters (real names: LayerNorm, bias, kernel, embedding)."""
  c = preset("tiny", vocab_size=64, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64)
  model = BertForPreTraining(c, rngs=nnx.Rngs(params=0))
  return nnx.split(model)[1].to_pure_dict()


def _flat(tree) -> dict:
  return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


def _optimizer_config(**changes):
  c = pretrain_configs.get_config("tiny").optimizer
  c.update(changes)
  return c


def test_decay_mask_skips_layer_norm_and_biases_and_covers_the_rest():
  flat = _flat(optim.decay_mask(_params()))
  no_decay = sorted(k for k, v in flat.items() if not v)
  decay = sorted(k for k, v in flat.items() if v)
  assert no_decay and all("LayerNorm" in k or k.endswith("/bias") for k in no_decay)
  assert all("LayerNorm" not in k and k.split("/")[-1] in ("kernel", "embedding") for k in decay)
  assert "predictions/bias" in no_decay  # the MLM output bias, beside the tied embedding
  assert "bert/embeddings/LayerNorm/scale" in no_decay
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    assert f"bert/embeddings/{name}/embedding" in decay
  assert "bert/encoder/layer/0/attention/self/query/kernel" in decay
  assert "seq_relationship/kernel" in decay


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedule_end_points(schedule):
  c = _optimizer_config(schedule=schedule, learning_rate=1e-3, end_learning_rate=1e-5,
                        warmup_steps=10, power=2.0)
  lr = optim.learning_rate_schedule(c, num_steps=100)
  assert float(lr(0)) == 0.0  # warm-up starts at zero ...
  assert float(lr(5)) == pytest.approx(5e-4)  # ... rises linearly ...
  assert float(lr(10)) == pytest.approx(1e-3)  # ... to the peak.
  end = 1e-3 if schedule == "constant" else 1e-5
  assert float(lr(100)) == pytest.approx(end)
  assert float(lr(1000)) == pytest.approx(end)  # and stays there past num_steps
  if schedule in ("linear", "polynomial"):  # (wsd's shape: test_wsd_shape)
    frac = (100 - 55) / 90  # halfway through the decay
    power = 1.0 if schedule == "linear" else 2.0
    assert float(lr(55)) == pytest.approx((1e-3 - 1e-5) * frac**power + 1e-5)


def test_no_warmup_starts_at_the_peak():
  lr = optim.learning_rate_schedule(_optimizer_config(warmup_steps=0, learning_rate=2e-3), 50)
  assert float(lr(0)) == pytest.approx(2e-3) and float(lr(50)) == pytest.approx(0.0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_moves_only_masked_parameters(name):
  """With zero gradients, the only update is weight decay: kernels and embeddings shrink,
  LayerNorm parameters and biases stay as they are."""
  # Non-zero everywhere, so that decay would show on biases too.
  params = jax.tree.map(lambda v: jnp.full_like(v, 0.5), _params())
  tx, _ = optim.create_optimizer(
      _optimizer_config(name=name, weight_decay=0.1, warmup_steps=0, clip_norm=1.0), 10)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = _flat(jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), updates))
  mask = _flat(optim.decay_mask(params))
  assert moved == mask


def test_bad_settings_are_refused():
  for changes, needle in ((dict(name="sgd"), "optimizer.name"),
                          (dict(schedule="cosine"), "optimizer.schedule"),
                          (dict(learning_rate=0.0), "learning_rate"),
                          (dict(weight_decay=-1.0), "weight_decay"),
                          (dict(warmup_steps=-1), "warmup_steps"),
                          (dict(grad_accum_steps=0), "grad_accum_steps")):
    with pytest.raises(ValueError, match=needle):
      optim.create_optimizer(_optimizer_config(**changes), 10)


@pytest.mark.parametrize("shape", optim.DECAY_SHAPES)
def test_wsd_shape(shape):
  """Warm-up to the peak, the peak until the last decay_fraction of the steps, then the decay
  shape down to end_learning_rate, and end_learning_rate after num_steps."""
  peak, end = 1e-3, 1e-5
  c = _optimizer_config(schedule="wsd", learning_rate=peak, end_learning_rate=end,
                        warmup_steps=10, decay_fraction=0.25, decay_shape=shape)
  lr = optim.learning_rate_schedule(c, num_steps=200)
  values = np.array([float(lr(s)) for s in range(0, 251)])
  assert values[0] == 0.0 and values[5] == pytest.approx(peak / 2)
  stable = values[10:151]  # the peak, unchanged, until step 150
  assert np.all(stable == stable[0]) and stable[0] == pytest.approx(peak, rel=1e-6)
  decay = values[150:201]
  assert np.all(np.diff(decay) < 0)  # strictly decreasing over the last 50 steps
  t = np.arange(51) / 50
  left = {"linear": 1 - t, "1-sqrt": 1 - np.sqrt(t), "cosine": 0.5 * (1 + np.cos(np.pi * t))}
  np.testing.assert_allclose(decay, end + (peak - end) * left[shape], rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(values[200:], end, rtol=1e-6)


def test_wsd_settings_are_refused():
  for changes, needle in ((dict(decay_fraction=0.0), "decay_fraction"),
                          (dict(decay_fraction=1.5), "decay_fraction"),
                          (dict(decay_shape="exp"), "decay_shape")):
    with pytest.raises(ValueError, match=needle):
      optim.create_optimizer(_optimizer_config(schedule="wsd", **changes), 10)


def test_wall_clock_steps_fill_the_time_left():
  # 100 steps done in 30 s of a 90 s budget at 0.5 s/step, a 6 s recompile to come: 54 s left,
  # 97% of it planned -> 104 more steps.
  assert optim.wall_clock_steps(100, 30.0, 90.0, 0.5, overhead_s=6.0) == 100 + int(54 * 0.97 / 0.5)
  assert optim.wall_clock_steps(7, 95.0, 90.0, 0.5) == 8  # out of time: one more step
  assert optim.steps_before_num_steps_matters(_optimizer_config(warmup_steps=12)) == 12
  assert optim.steps_before_num_steps_matters(_optimizer_config(schedule="constant")) > 1e9
