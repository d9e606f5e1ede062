"""layers.matmul: the mixed-precision matmul with its own VJP equals a plain matmul."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.layers import matmul

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
