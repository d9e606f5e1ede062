"""benchmarks/matmul_peak.py, the MFU denominator: where bert_jax's Dense layers multiply on
oneDNN, each precision's peak is also measured through oneDNN in that precision (a bf16 peak
timed on f32 products would understate it and overstate every MFU), and each peak is the faster
of XLA's dot and oneDNN's."""
import jax.numpy as jnp

from benchmarks import matmul_peak
from bert_jax import layers, onednn


def test_each_precisions_peak_runs_its_own_products(monkeypatch):
  seen = []

  def product(a, b, transpose_b=False, dtype=jnp.float32):
    seen.append((jnp.dtype(dtype).name, jnp.dtype(a.dtype).name))
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)

  monkeypatch.setattr(layers, "on_onednn", lambda dtype: True)
  monkeypatch.setattr(onednn, "batched_matmul", product)
  peaks = matmul_peak.measure(n=64, reps=1)
  assert set(seen) == {("float32", "float32"), ("bfloat16", "bfloat16")}
  assert peaks["f32"] == max(peaks["f32_xla"], peaks["f32_onednn"]) > 0
  assert peaks["bf16_in_f32_acc"] == max(peaks["bf16_xla"], peaks["bf16_onednn"]) > 0


def test_xla_only_where_the_dense_layers_do_not_use_onednn(monkeypatch):
  monkeypatch.setattr(layers, "on_onednn", lambda dtype: False)
  peaks = matmul_peak.measure(n=64, reps=1)
  assert "f32_onednn" not in peaks and "bf16_onednn" not in peaks
  assert peaks["f32"] == peaks["f32_xla"] and peaks["bf16_in_f32_acc"] == peaks["bf16_xla"]
