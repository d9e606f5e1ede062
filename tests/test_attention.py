"""bert_jax.attention: the kernels agree with the dense XLA reference on every mask.

Masks: right padding, packed segment ids, a local window, and all three at once. The chunked XLA
path (long sequences) and Splash attention (run by the Pallas interpreter on CPU) are compared
with the dense reference; cuDNN and Splash fall back to XLA here with one stated reason.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import attention as att

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(b, seq_len, n, h, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (b, seq_len, n, h), jnp.float32) for k in keys]


def _mask(b, seq_len, packed: bool, seed=0) -> att.MaskSpec:
  """Rows padded at the end; packed rows hold 3 documents of uneven lengths."""
  rng = np.random.default_rng(seed)
  key_mask = np.zeros((b, seq_len), np.int32)
  seg = np.zeros((b, seq_len), np.int32)
  for r in range(b):
    real = int(seq_len * rng.uniform(0.6, 0.95))
    key_mask[r, :real] = 1
    cuts = np.sort(rng.choice(np.arange(1, real), 2, replace=False))
    for k, (s, e) in enumerate(zip([0, *cuts], [*cuts, real], strict=True)):
      seg[r, s:e] = k + 1
  return att.MaskSpec(jnp.asarray(key_mask), jnp.asarray(seg) if packed else None)


def _reference(q, k, v, mask, half_window):
  ctx, _ = att.dot_product_attention(q, k, v, mask, impl="xla", dtype=jnp.float32,
                                     dropout_rate=0.0, dropout_rng=None, want_probs=True,
                                     half_window=half_window)  # want_probs forces the dense path
  return ctx


def _real(x, mask):
  return np.asarray(x)[np.asarray(mask.key_mask_BxL) > 0]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("half_window", [None, 40])
def test_chunked_matches_dense_reference(packed, half_window):
  b, seq_len, n, h = 2, 1024, 2, 8
  q, k, v = _inputs(b, seq_len, n, h)
  mask = _mask(b, seq_len, packed)
  scale = 1.0 / np.sqrt(h)
  want = _reference(q, k, v, mask, half_window)
  got = att.chunked_attention(q * scale, k, v, mask, dtype=jnp.float32, half_window=half_window,
                              chunk=128)
  np.testing.assert_allclose(_real(got, mask), _real(want, mask), atol=1e-5)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(mask.key_mask_BxL[:, :, None, None] > 0, fn(q, k, v), 0.0) ** 2)

  g_want = jax.grad(lambda *a: loss(lambda q, k, v: _reference(q, k, v, mask, half_window), *a),
                    argnums=(0, 1, 2))(q, k, v)
  g_got = jax.grad(lambda *a: loss(lambda q, k, v: att.chunked_attention(
      q * scale, k, v, mask, dtype=jnp.float32, half_window=half_window, chunk=128), *a),
      argnums=(0, 1, 2))(q, k, v)
  for gw, gg in zip(g_want, g_got, strict=True):
    np.testing.assert_allclose(gg, gw, atol=1e-4)


def test_long_sequences_take_the_chunked_path():
  seq_len = att.CHUNK_FROM
  q, k, v = _inputs(1, seq_len, 1, 8)
  mask = _mask(1, seq_len, packed=True)
  got, probs = att.dot_product_attention(q, k, v, mask, impl="xla", dtype=jnp.float32,
                                         dropout_rate=0.0, dropout_rng=None, half_window=64)
  assert probs is None
  hlo = jax.jit(lambda q, k, v: att.dot_product_attention(
      q, k, v, mask, impl="xla", dtype=jnp.float32, dropout_rate=0.0, dropout_rng=None,
      half_window=64)[0]).lower(q, k, v).as_text()
  assert f"{seq_len}x{seq_len}" not in hlo  # no [L, L] score or mask tensor anywhere
  np.testing.assert_allclose(_real(got, mask), _real(_reference(q, k, v, mask, 64), mask),
                             atol=1e-5)


@pytest.mark.parametrize("packed,half_window", [(False, None), (True, None), (True, 100),
                                                (False, 64)])
def test_splash_matches_reference_in_interpreter(packed, half_window):
  """The Splash kernel itself (TPU Pallas), run by the Pallas interpreter on CPU."""
  b, seq_len, n, h = 1, 256, 2, 64
  q, k, v = _inputs(b, seq_len, n, h, seed=1)
  mask = _mask(b, seq_len, packed, seed=1)
  got = att.splash_attention(q / np.sqrt(h), k, v, mask, dtype=jnp.float32,
                             half_window=half_window, interpret=True)
  np.testing.assert_allclose(_real(got, mask), _real(_reference(q, k, v, mask, half_window), mask),
                             atol=1e-5)


def test_kernels_fall_back_on_cpu_with_one_reason(caplog):
  assert jax.default_backend() == "cpu"
  assert "needs an NVIDIA GPU" in att.fallback_reason("cudnn", jnp.bfloat16, False, False)
  assert "TPU kernel" in att.fallback_reason("splash", jnp.bfloat16, False, False)
  assert "divisible by 128" in att.fallback_reason("splash", jnp.bfloat16, False, False, 100,
                                                   backend="tpu")
  assert "float32" in att.fallback_reason("cudnn", jnp.float32, False, False, backend="gpu")
  assert att.fallback_reason("cudnn", jnp.bfloat16, False, False, backend="gpu") == ""
  assert att.fallback_reason("splash", jnp.bfloat16, False, False, 256, backend="tpu") == ""
  assert "dropout" in att.fallback_reason("splash", jnp.bfloat16, True, False, backend="tpu")
  assert att.resolve_impl("auto", jnp.bfloat16, False, False) == "xla"
  att._warned.clear()
  q, k, v = _inputs(1, 16, 2, 8)
  mask = _mask(1, 16, packed=True)
  with caplog.at_level(logging.WARNING, logger="bert_jax.attention"):
    for impl in ("cudnn", "splash", "cudnn"):
      got, _ = att.dot_product_attention(q, k, v, mask, impl=impl, dtype=jnp.bfloat16,
                                         dropout_rate=0.0, dropout_rng=None, half_window=3)
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2, messages  # one line per reason, not one per call
  assert "attention_impl='cudnn' falls back to 'xla': cuDNN attention needs an NVIDIA GPU" in \
      messages[0]
  want, _ = att.dot_product_attention(q, k, v, mask, impl="xla", dtype=jnp.bfloat16,
                                      dropout_rate=0.0, dropout_rng=None, half_window=3)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("packed,half_window", [(False, None), (True, 5)])
def test_cudnn_branch_traces_under_jit(monkeypatch, packed, half_window):
  """The cuDNN call as a jitted step makes it. Two things failed every cudnn row on an H200: a
  traced `scale`, and a padding-only mask of [B, 1, 1, M] ("Bias must have same seq length as
  QKV"). CPU has no cuDNN, so jax's own XLA implementation stands in for it, after checks of
  what cuDNN needs: a Python scale and a mask of the whole [B, 1, L, M]."""
  seen = {}
  real = jax.nn.dot_product_attention

  def stand_in(q, k, v, *, mask, scale, implementation):
    assert implementation == "cudnn" and isinstance(scale, float), (implementation, scale)
    seen["mask"] = mask.shape
    return real(q, k, v, mask=mask, scale=scale, implementation="xla")

  monkeypatch.setattr(att, "resolve_impl", lambda impl, *a: impl)
  monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
  q, k, v = _inputs(2, 16, 2, 8, seed=2)
  mask = _mask(2, 16, packed=packed, seed=2)
  run = jax.jit(lambda q, k, v, impl: att.dot_product_attention(
      q, k, v, mask, impl=impl, dtype=jnp.bfloat16, dropout_rate=0.0, dropout_rng=None,
      half_window=half_window)[0], static_argnums=3)
  got, want = run(q, k, v, "cudnn"), run(q, k, v, "xla")
  assert seen["mask"] == (2, 1, 16, 16)
  np.testing.assert_allclose(_real(got, mask), _real(want, mask), atol=2e-2)


def _pretend_hopper_with_cudnn(monkeypatch):
  """JAX's own cuDNN attention path, traced on this CPU as if on an H100/H200 with cuDNN 9.10:
  its version and compute-capability probes patched, everything else (layout and mask checks,
  static arguments, the custom VJP) JAX's real code, up to the jaxpr (no lowering)."""
  fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  probes = ("check_cudnn_version", "check_compute_capability", "is_cuda_compute_capability_equal")
  if not all(hasattr(fa, p) for p in probes):
    pytest.skip(f"this jax ({jax.__version__}) has no {probes} in {fa.__name__}")
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(fa, "check_compute_capability", lambda capability: True)
  monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda capability: False)
  monkeypatch.setattr(att, "target_backend", lambda: "gpu")


def test_gpu_train_step_traces_through_jaxs_cudnn_attention(monkeypatch):
  """The GPU benchmark's train step (benchmarks/bert_jax_step.py, bf16, cuDNN attention, as run
  on an H200) through JAX's real cuDNN checks: both bugs that run found (a traced scale, a
  [B, 1, 1, M] padding mask) fail here, and the fused kernel is in the step, backward too."""
  from benchmarks import bert_jax_step
  _pretend_hopper_with_cudnn(monkeypatch)
  config = bert_jax_step.bench_config("mini", 2, 128, 16, "bfloat16", "cudnn", dropout=0.1)
  config.model.attention_probs_dropout_prob = 0.0
  p = bert_jax_step.prepare(config)
  with jax.set_mesh(p["mesh"]):
    jaxpr = str(p["step_fn"].trace(p["state"], p["batch"], p["rng"]).jaxpr)
  assert "dot_product_attention_fwd_wrapper" in jaxpr
  assert "dot_product_attention_bwd_wrapper" in jaxpr


def test_modern_gradients_trace_through_jaxs_cudnn_attention(monkeypatch):
  """ModernBERT with cuDNN attention: packed rows (segment ids), padding, local and global
  layers, forward and gradients, through JAX's real cuDNN checks as above."""
  from flax import nnx

  from bert_jax import modern_modeling
  from bert_jax.modern_configuration import ModernBertConfig
  _pretend_hopper_with_cudnn(monkeypatch)
  config = ModernBertConfig(vocab_size=128, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=3, num_attention_heads=2, local_attention=16,
                            global_attn_every_n_layers=3, dtype="bfloat16",
                            attention_impl="cudnn")
  graphdef, state = nnx.split(modern_modeling.ModernBertModel(config, rngs=nnx.Rngs(params=0)))
  mask = _mask(2, 64, packed=True, seed=3)
  ids = jnp.asarray(np.random.default_rng(3).integers(5, 128, (2, 64)), jnp.int32)

  def loss(state, ids, key_mask, segments):
    out = nnx.merge(graphdef, state)(ids, key_mask, None, None, packed_segment_ids=segments)
    return out.last_hidden_state.astype(jnp.float32).sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(state, ids, mask.key_mask_BxL, mask.segment_ids_BxL))
  assert jaxpr.count("dot_product_attention_fwd_wrapper") >= 3  # every layer, local and global
  assert "dot_product_attention_bwd_wrapper" in jaxpr


def test_splash_train_step_compiles_for_v5e():
  """The ModernBERT MLM train step with Splash attention (packed rows, local and global layers),
  compiled for a v5e:2x2 slice by libtpu on this CPU machine (tests/aot_modern_step.py)."""
  from bert_jax import tpu_compiler
  if importlib.util.find_spec("libtpu") is None and not os.path.isdir(
      os.path.join(tpu_compiler.cache_dir(), "libtpu")):
    pytest.skip(f"libtpu is not installed; run tests/test_aot.py once or "
                f"`{tpu_compiler.install_command()}`.")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "aot_modern_step.py"),
                      "--preset=modern_tiny", "--topology=v5e:2x2", "--seq_len=256",
                      "--batch_per_chip=1"], capture_output=True, text=True, env=env, cwd=ROOT,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  report = json.loads(p.stdout.strip().splitlines()[-1])
  assert report["device_kind"] == "TPU v5 lite" and report["chips"] == 4
  assert report["splash_kernel_in_hlo"], report
  assert 0 < report["memory_per_chip_bytes"] < 16 * 2**30
  assert report["xla_flops_per_chip"] > 0
