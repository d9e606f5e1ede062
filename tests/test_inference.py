"""bert_jax.inference: length buckets and the compute-dtype state of `inference_split`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import bert_jax
from bert_jax import inference, onednn


def _tiny(dtype: str):
  config = dataclasses.replace(bert_jax.preset("tiny"), vocab_size=512, dtype=dtype)
  return bert_jax.create_model(bert_jax.BertForSequenceClassification, config, num_labels=3)


def _kernels(state) -> dict[str, jnp.dtype]:
  flat = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(p): x.dtype for p, x in flat if "kernel" in jax.tree_util.keystr(p)}


def test_length_bucket_covers_and_bounds_padding():
  for n in range(1, 513):
    b = inference.length_bucket(n, 512)
    assert n <= b <= 512 and b % 8 == 0
    assert b <= max(16, 1.5 * n + 8)  # at most ~1.5x the length (plus one step of 8)
  assert inference.length_bucket(33, 512) == 48
  assert inference.length_bucket(200, 256) == 256
  assert inference.length_bucket(300, 256) == 300  # Longer than the cap: left to the model.


def test_inference_split_casts_dense_kernels_and_keeps_the_numbers(monkeypatch):
  # The cast alone: on a CPU with native bf16 the split's form also has oneDNN's column panels
  # and fused attention core (tests/test_onednn.py checks those against XLA).
  monkeypatch.setattr(onednn, "bf16_enabled", lambda *a, **k: False)
  model = _tiny("bfloat16")
  graphdef, leaves = inference.inference_split(model)
  state = graphdef.state(leaves)
  kernels = _kernels(state)
  assert len(kernels) == 2 * 6 + 2  # q, k, v, attention out, FFN in/out per layer; pooler, head
  assert set(kernels.values()) == {jnp.dtype(jnp.bfloat16)}
  _, plain = nnx.split(model)
  assert set(_kernels(plain).values()) == {jnp.dtype(jnp.float32)}  # The model is untouched.
  embeddings = [x for p, x in jax.tree_util.tree_leaves_with_path(state)
                if "embeddings" in jax.tree_util.keystr(p)]
  assert embeddings and all(x.dtype == jnp.float32 for x in embeddings)

  ids = np.random.default_rng(0).integers(5, 512, (3, 16))
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  apply = jax.jit(lambda g, s, i, m: nnx.merge(g.graphdef, s)(i, m), static_argnums=0)
  np.testing.assert_array_equal(apply(graphdef, state, ids, mask),
                                apply(graphdef, plain, ids, mask))
  other = inference.split(model)[0]  # Equal structure: the same compile.
  assert other == graphdef and hash(other) == hash(graphdef)

  assert inference.inference_split(model)[1] is leaves  # Cached while the weights are the same.
  plain["classifier"]["kernel"].value = plain["classifier"]["kernel"].value + 1.0
  nnx.update(model, plain)  # An updated model gets a fresh cast.
  fresh_leaves = inference.inference_split(model)[1]
  assert fresh_leaves is not leaves
  fresh = graphdef.state(fresh_leaves)
  np.testing.assert_array_equal(
      np.asarray(fresh["classifier"]["kernel"].value, np.float32),
      np.asarray(plain["classifier"]["kernel"].value.astype(jnp.bfloat16), np.float32))
  assert inference.inference_split(model)[1] is fresh_leaves
  model.classifier.bias.value = model.classifier.bias.value - 1.0  # Assigned on the model itself.
  again_leaves = inference.inference_split(model)[1]
  assert again_leaves is not fresh_leaves
  again = graphdef.state(again_leaves)
  np.testing.assert_array_equal(again["classifier"]["bias"].value, model.classifier.bias.value)


def test_inference_split_of_a_float32_model_is_the_plain_split():
  model = _tiny("float32")
  graphdef, leaves = inference.inference_split(model)
  assert set(_kernels(graphdef.state(leaves)).values()) == {jnp.dtype(jnp.float32)}
