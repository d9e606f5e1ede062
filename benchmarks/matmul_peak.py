"""The machine's measured matmul peak, the denominator that makes an MFU figure mean something.

A jitted n x n x n matmul, f32, and bf16 inputs with f32 accumulation
(`preferred_element_type=float32`, how bert_jax's Dense runs). Median of `reps` timed calls.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_flops_per_s(n: int = 4096, dtype=jnp.float32, reps: int = 5, chain: int = 1) -> float:
  """FLOP/s of `chain` back-to-back n^3 matmuls in one jitted call (chain > 1 hides dispatch)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = (jax.random.normal(k2, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

  @jax.jit
  def f(a, b):
    x = a
    for _ in range(chain):
      x = jnp.dot(x, b, preferred_element_type=jnp.float32).astype(dtype)
    return x

  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  return 2.0 * n**3 * chain / float(np.median(times))


def measure(n: int = 4096, reps: int = 5, chain: int = 1) -> dict[str, float]:
  """{'f32': FLOP/s, 'bf16_in_f32_acc': FLOP/s} on the default device."""
  return {"f32": matmul_flops_per_s(n, jnp.float32, reps, chain),
          "bf16_in_f32_acc": matmul_flops_per_s(n, jnp.bfloat16, reps, chain), "n": n}
