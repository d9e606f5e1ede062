"""layers: the mixed-precision matmul with its own VJP equals a plain matmul; dropout masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.layers import activation, counter_bits, dropout, matmul

CASES = [((6, 8), (8, 10), False), ((7, 8), (8, 9), False),  # even and odd split axes
         ((6, 8), (10, 8), True), ((5, 9), (7, 9), True),
         ((2, 3, 6, 4), (2, 3, 4, 6), False), ((2, 3, 6, 4), (2, 3, 8, 4), True),
         ((2, 6, 4), (4, 6), False)]  # b broadcast over a's batch dim


def _reference(a, b, transpose_b):
  return jnp.matmul(a, jnp.swapaxes(b, -1, -2) if transpose_b else b, precision="highest")


@pytest.mark.parametrize("shape_a,shape_b,transpose_b", CASES)
def test_matmul_value_and_grads_match_plain_matmul(shape_a, shape_b, transpose_b):
  ka, kb, kr = jax.random.split(jax.random.key(0), 3)
  a, b = jax.random.normal(ka, shape_a), jax.random.normal(kb, shape_b)
  out = jax.jit(lambda a, b: matmul(a, b, jnp.float32, transpose_b))(a, b)
  want = _reference(a, b, transpose_b)
  np.testing.assert_allclose(out, want, atol=1e-5)
  r = jax.random.normal(kr, want.shape)
  got = jax.jit(jax.grad(lambda a, b: jnp.sum(matmul(a, b, jnp.float32, transpose_b) * r),
                         (0, 1)))(a, b)
  ref = jax.grad(lambda a, b: jnp.sum(_reference(a, b, transpose_b) * r), (0, 1))(a, b)
  for g, w in zip(got, ref, strict=True):
    assert g.dtype == jnp.float32 and g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=1e-5)
  # bf16 inputs: the same up to bf16 rounding of inputs and cotangent, gradients still f32.
  low = jax.jit(jax.grad(lambda a, b: jnp.sum(matmul(a, b, jnp.bfloat16, transpose_b) * r),
                         (0, 1)))(a, b)
  for g, w in zip(low, ref, strict=True):
    assert g.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) < 2e-2


def test_only_bf16_backward_materialises_transposes():
  """bf16: the split-axis copy (a transpose of a rank+1 array) keeps XLA:CPU on its bf16 kernels;
  f32: no copy, the dots read the transposed operands (14% faster BERT-base f32 step)."""
  a, b = jnp.ones((6, 8)), jnp.ones((8, 10))

  def transposes(dtype):
    jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(matmul(a, b, dtype)), (0, 1)))(a, b)
    return str(jaxpr).count("transpose[")

  assert transposes(jnp.float32) == 0
  assert transposes(jnp.bfloat16) > 0


# ----------------------------------------------------------------------------- dropout

def test_dropout_drops_at_the_rate_and_keeps_the_mean():
  x = jnp.ones((16, 128, 768))
  for rate in (0.1, 0.5):
    y = np.asarray(jax.jit(lambda x, k, r=rate: dropout(x, r, k))(x, jax.random.key(3)))
    dropped, n = float(np.mean(y == 0)), y.size
    assert abs(dropped - rate) < 4 * np.sqrt(rate * (1 - rate) / n), (rate, dropped)
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(float(y.mean()) - 1.0) < 0.01
  assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


def test_counter_bits_look_independent_across_elements_axes_and_keys():
  key = jax.random.key(7)
  shape = (8, 12, 64, 64)
  bits = np.asarray(counter_bits(key, shape))
  assert bits.dtype == np.uint32 and bits.shape == shape
  assert abs(np.unpackbits(bits.view(np.uint8)).mean() - 0.5) < 1e-3  # every bit balanced
  drop = (bits < np.uint32(0.1 * 2**32)).astype(np.float64)
  for axis in range(4):  # neighbours along every axis are uncorrelated
    a, b = np.moveaxis(drop, axis, 0)[1:].ravel(), np.moveaxis(drop, axis, 0)[:-1].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01, axis
  other = np.asarray(counter_bits(jax.random.fold_in(key, 1), shape))
  both = np.mean((bits < np.uint32(0.1 * 2**32)) & (other < np.uint32(0.1 * 2**32)))
  assert abs(both - 0.01) < 0.001  # independent keys: P(both dropped) = 0.1 * 0.1
  assert not np.array_equal(bits, np.asarray(counter_bits(jax.random.key(8), shape)))
  np.testing.assert_array_equal(bits, np.asarray(jax.jit(counter_bits, static_argnums=1)(
      key, shape)))


_SHARDED_BITS = """
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from bert_jax.layers import counter_bits
mesh = jax.make_mesh((2, 4), ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
out = NamedSharding(mesh, P("a", None, "b"))
f = jax.jit(lambda k: counter_bits(k, (4, 6, 8)), out_shardings=out)
sharded = f(jax.random.key(5))
assert len(sharded.addressable_shards) == 8
one = jax.jit(lambda k: counter_bits(k, (4, 6, 8)),
              out_shardings=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
np.testing.assert_array_equal(np.asarray(sharded), np.asarray(one(jax.random.key(5))))
print("same bits")
"""


def test_counter_bits_are_the_same_on_any_sharding():
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-c", _SHARDED_BITS], env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and "same bits" in r.stdout, r.stderr[-2000:]


def test_exact_gelu_matches_torch_and_its_gradient():
  import torch
  x = np.linspace(-10, 10, 20001, dtype=np.float32)
  gelu = activation("gelu")
  want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(x))), want, atol=3e-6)
  t = torch.from_numpy(x).requires_grad_()
  torch.nn.functional.gelu(t).sum().backward()
  np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(gelu))(jnp.asarray(x))), t.grad.numpy(),
                             atol=3e-6)


def test_dropout_gradient_is_the_same_mask_scaled():
  key, rate = jax.random.key(4), 0.25
  x = jax.random.normal(jax.random.key(5), (6, 32, 48))
  r = jax.random.normal(jax.random.key(6), x.shape)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(dropout(x, rate, key) * r)))(x)
  kept = dropout(jnp.ones_like(x), rate, key) != 0
  np.testing.assert_allclose(grad, np.where(kept, r / (1 - rate), 0.0), rtol=1e-6)
