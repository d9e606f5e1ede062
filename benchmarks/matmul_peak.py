"""The machine's measured matmul peak, the denominator that makes an MFU figure mean something.

A jitted n x n x n matmul, f32, and bf16 inputs with f32 accumulation
(`preferred_element_type=float32`, how bert_jax's Dense runs). Median of `reps` timed calls.
On one CPU device bert_jax's Dense layers multiply on oneDNN (layers.on_onednn: f32, and bf16
where the CPU has native bf16), which outruns XLA's dot there: each peak is then the faster of
the two, both recorded.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def _xla_dot(x, b):
  return jnp.dot(x, b, preferred_element_type=jnp.float32)


def matmul_flops_per_s(n: int = 4096, dtype=jnp.float32, reps: int = 5, chain: int = 1,
                       product=_xla_dot) -> float:
  """FLOP/s of `chain` back-to-back n^3 matmuls (`product`, f32 out) in one jitted call (chain > 1
  hides dispatch)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = (jax.random.normal(k2, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)

  @jax.jit
  def f(a, b):
    x = a
    for _ in range(chain):
      x = product(x, b).astype(dtype)
    return x

  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  return 2.0 * n**3 * chain / float(np.median(times))


def measure(n: int = 4096, reps: int = 5, chain: int = 1) -> dict[str, float]:
  """{'f32': FLOP/s, 'bf16_in_f32_acc': FLOP/s, 'f32_xla': ..., 'bf16_xla': ...,
  ['f32_onednn': ..., 'bf16_onednn': ...]} on the default device; 'f32' and 'bf16_in_f32_acc'
  are the faster of XLA's dot and, where bert_jax's Dense layers use it, oneDNN's."""
  from bert_jax import layers, onednn
  peaks = {"n": n}
  for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
    peaks[f"{name}_xla"] = matmul_flops_per_s(n, dtype, reps, chain)
    if layers.on_onednn(dtype):
      peaks[f"{name}_onednn"] = matmul_flops_per_s(
          n, dtype, reps, chain,
          product=lambda x, b, dtype=dtype: onednn.batched_matmul(x, b, False, dtype))
  peaks["f32"] = max(peaks["f32_xla"], peaks.get("f32_onednn", 0.0))
  peaks["bf16_in_f32_acc"] = max(peaks["bf16_xla"], peaks.get("bf16_onednn", 0.0))
  return peaks
