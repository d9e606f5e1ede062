"""The oneDNN matmul custom call (bert_jax.onednn): it builds, its int8 products are the exact
integers XLA computes, its float products match XLA's, and a real int8 model (all-MiniLM-L6-v2 on
real sentences, int8 weights and activations) gives the same embeddings through it as through
XLA, with the custom call really in the compiled program; f32 attention's products on oneDNN
(forward and gradients) agree with XLA's, in the real model too."""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, corpus_sentences, run_train_steps

from bert_jax import onednn
from bert_jax.errors import ConfigError

REASON = onednn.unavailable_reason()
needs_kernel = pytest.mark.skipif(bool(REASON), reason=f"oneDNN kernel unavailable: {REASON}")
INT8_REASON = onednn.int8_reason()
needs_int8 = pytest.mark.skipif(bool(INT8_REASON), reason=f"no oneDNN int8 here: {INT8_REASON}")


@needs_int8
@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (True, False),
                                                     (False, True)])
def test_int8_products_are_xlas_integers(transpose_a, transpose_b):
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.randint(ka, (72, 40) if transpose_a else (40, 72), -128, 128).astype(jnp.int8)
  b = jax.random.randint(kb, (56, 72) if transpose_b else (72, 56), -128, 128).astype(jnp.int8)
  got = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.int32, transpose_a=transpose_a,
                                           transpose_b=transpose_b))(a, b)
  a32, b32 = a.astype(jnp.int32), b.astype(jnp.int32)
  want = (a32.T if transpose_a else a32) @ (b32.T if transpose_b else b32)
  assert got.shape == (40, 56) and got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(jax.jit(onednn.int8_matmul)(
      a32.T.astype(jnp.int8) if transpose_a else a, b32.T.astype(jnp.int8) if transpose_b
      else b)), np.asarray(want))


@needs_kernel
def test_batched_products_over_leading_dims():
  ka, kb = jax.random.split(jax.random.key(2))
  a = jax.random.normal(ka, (2, 3, 8, 16)).astype(jnp.bfloat16)
  b = jax.random.normal(kb, (2, 3, 12, 16)).astype(jnp.bfloat16)
  got = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.float32, transpose_b=True))(a, b)
  want = jnp.einsum("xymk,xynk->xymn", a.astype(jnp.float32), b.astype(jnp.float32))
  assert got.shape == (2, 3, 8, 12)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 12])
@pytest.mark.parametrize("transpose_a,transpose_b", [(False, False), (False, True), (True, False)])
def test_batches_split_over_xlas_threads_are_whole_and_in_place(batch, transpose_a, transpose_b):
  # From one batch entry per XLA intra-op thread on, the batch goes in contiguous slices, one per
  # thread (uneven at 3 and 5 on two threads): every entry's product, at its own offset.
  ka, kb = jax.random.split(jax.random.key(batch))
  a = jax.random.normal(ka, (batch, 24, 40) if transpose_a else (batch, 40, 24))
  b = jax.random.normal(kb, (batch, 36, 24) if transpose_b else (batch, 24, 36))
  got = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.float32, transpose_a=transpose_a,
                                           transpose_b=transpose_b))(a, b)
  want = jnp.einsum("xmk,xkn->xmn", jnp.swapaxes(a, 1, 2) if transpose_a else a,
                    jnp.swapaxes(b, 1, 2) if transpose_b else b,
                    precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  if INT8_REASON:
    return
  a8 = jax.random.randint(ka, (batch, 40, 24), -128, 128).astype(jnp.int8)
  b8 = jax.random.randint(kb, (batch, 24, 36), -128, 128).astype(jnp.int8)
  got8 = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.int32))(a8, b8)
  want8 = np.einsum("xmk,xkn->xmn", np.asarray(a8, np.int64), np.asarray(b8, np.int64))
  np.testing.assert_array_equal(np.asarray(got8), want8)


@needs_kernel
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-5)])
def test_float_products_match_xla(dtype, tol):
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.normal(ka, (33, 64)).astype(dtype)
  b = jax.random.normal(kb, (64, 17)).astype(dtype)
  got = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.float32))(a, b)
  want = jnp.dot(a.astype(jnp.float32), b.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("m,k,n,panels", [(1, 48, 32, 2), (40, 384, 1536, 2), (130, 64, 96, 3),
                                          (7, 16, 64, 4)])
def test_panel_products_match_the_plain_product(m, k, n, panels, dtype):
  """a @ W from W's dense column panels (one custom call, a panel a thread, each writing its
  columns in place), f32 or bf16 operands, f32 results: the product of the plain [K, N]
  operand on oneDNN (bit for bit in f32; in bf16 oneDNN may pick another kernel for the plain
  operand, whose f32 sums can differ in the last bit), and the exact product of the rounded
  operands."""
  rng = np.random.default_rng(m + n)
  a = rng.standard_normal((m, k), np.float32)
  w = rng.standard_normal((k, n), np.float32)
  w_PxKxn = onednn.column_panels(w, panels, dtype)
  assert w_PxKxn.shape == (panels, k, n // panels) and w_PxKxn.dtype == dtype
  np.testing.assert_array_equal(np.asarray(w_PxKxn[1]),
                                np.asarray(jnp.asarray(w[:, n // panels:2 * n // panels], dtype)))
  got = np.asarray(jax.jit(onednn.panel_matmul)(a, w_PxKxn))
  assert got.dtype == np.float32
  a_r, w_r = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32), np.float64) for x in (a, w))
  np.testing.assert_allclose(got, a_r @ w_r, rtol=1e-4, atol=1e-4)
  plain = np.asarray(jax.jit(
      lambda a, w: onednn.matmul(a.astype(dtype), w.astype(dtype), jnp.float32))(a, w))
  if dtype == jnp.float32:
    np.testing.assert_array_equal(got, plain)
  else:
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())


@needs_kernel
def test_panel_products_of_the_leading_rows():
  """With `rows`, a panel product multiplies only a's first rows (the same bits as the whole
  product there) and writes zeros after them; rows past M mean all of them."""
  rng = np.random.default_rng(3)
  a = rng.standard_normal((40, 64), np.float32)
  w_PxKxn = onednn.column_panels(rng.standard_normal((64, 96), np.float32), 2)
  f = jax.jit(onednn.panel_matmul)
  whole = np.asarray(f(a, w_PxKxn))
  for rows in (0, 1, 17, 40, 45):
    got = np.asarray(f(a, w_PxKxn, jnp.int32(rows)))
    np.testing.assert_array_equal(got[:rows], whole[:rows])
    assert not got[rows:].any()


@needs_kernel
def test_one_thread_runs_wide_f32_operands_in_column_runs():
  """With one XLA thread (the process pinned to one core), an f32 product whose plain operand
  has more than 1,536 columns goes to oneDNN as column runs of 1,536 (its brgemm kernel ran a
  plain 3072-column operand at half speed): the runs are what oneDNN executes, and the product,
  forward and weight-gradient layouts, is still right."""
  code = (
      "import os\n"
      "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
      "import numpy as np, jax, jax.numpy as jnp\n"
      "from bert_jax import onednn\n"
      "rng = np.random.default_rng(0)\n"
      "a = rng.standard_normal((40, 96), np.float32)\n"
      "b = rng.standard_normal((96, 3200), np.float32)\n"
      "at = np.ascontiguousarray(a.T)\n"
      "f = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.float32))\n"
      "g = jax.jit(lambda a, b: onednn.matmul(a, b, jnp.float32, transpose_a=True))\n"
      "want = a.astype(np.float64) @ b\n"
      "for got in (f(a, b), g(at, b)):\n"
      "  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)\n"
      "print('ok')\n")
  env = {**os.environ, "ONEDNN_VERBOSE": "1", "BERT_JAX_ONEDNN": "on"}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[-1] == "ok"
  shapes = [line.rsplit(",", 2)[-2] for line in proc.stdout.splitlines()
            if line.startswith("onednn_verbose,") and ",exec," in line and ",matmul," in line]
  # Forward and transposed-a products, each as runs of 1536, 1536 and 128 columns.
  for cols in (1536, 128):
    assert sum(s.endswith(f"x{cols}") for s in shapes) == (4 if cols == 1536 else 2), shapes
  assert not any(s.endswith("x3200") for s in shapes), shapes


@needs_int8
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (7, 40, 56), (130, 768, 768), (300, 384, 1536)])
def test_packed_int8_products_are_xlas_integers(m, k, n):
  """Weights packed once into oneDNN's blocked layout (for u8 activations, column offsets
  appended) give the exact integers at any number of rows, including ones the layout was not
  chosen at, with -128 in the activations. The packed weights are only read, also where the
  layout pads their width (48 and 56 columns) and a second call reuses the kernel's memory
  objects."""
  ka, kb = jax.random.split(jax.random.key(m))
  a = jax.random.randint(ka, (m, k), -128, 128).astype(jnp.int8)
  b = jax.random.randint(kb, (k, n), -128, 128).astype(jnp.int8)
  packed = onednn.pack_int8(b)
  assert packed.dtype == jnp.uint8 and packed.size >= k * n
  bytes_before = np.asarray(packed).copy()
  for _ in range(2):
    got = jax.jit(onednn.int8_matmul)(a, b, packed)
    np.testing.assert_array_equal(np.asarray(got),
                                  np.asarray(a.astype(jnp.int32) @ b.astype(jnp.int32)))
  np.testing.assert_array_equal(np.asarray(packed), bytes_before)


def _embed_in_subprocess(code: str, mode: str, tmp_path) -> tuple[str, np.ndarray]:
  """Runs `code` (which saves embeddings to sys.argv[1]) with BERT_JAX_ONEDNN=mode in a fresh
  process (the choice is read when a function is traced): (its last printed line, the array)."""
  path = str(tmp_path / f"{mode}.npy")
  proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                        env={**os.environ, onednn.ENV: mode, "PYTHONPATH": str(REPO)},
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1], np.load(path)


@needs_int8
def test_int8_model_on_onednn_equals_xla(minilm_dir, mobydick_path, tmp_path):
  """The real model, int8 weights and per-token int8 activations, on real sentences: the same
  embeddings bit for bit whichever computes the int8 Dense layers (subprocesses: the choice is
  read when a function is traced): XLA (qwix's quantize, the product, the rescale), or oneDNN's
  one call per layer reading its kernels packed."""
  code = (
      "import sys, numpy as np, jax, bert_jax\n"
      "from bert_jax import onednn, quantization\n"
      # Attention's f32 products on XLA in both runs: only the int8 products' engine differs.
      "onednn.f32_enabled = lambda *a, **k: False\n"
      f"texts = {corpus_sentences(mobydick_path, 12, min_words=5)!r}\n"
      f"m = bert_jax.BertModel.from_pretrained({str(minilm_dir)!r})\n"
      f"t = bert_jax.BertTokenizer.from_pretrained({str(minilm_dir)!r})\n"
      "q = quantization.quantize(m, 'int8', activations=True)\n"
      "np.save(sys.argv[1], bert_jax.embed(q, t, texts, normalize=True))\n"
      "from bert_jax import inference\n"
      "g, s = inference.inference_split(q)\n"
      "ids = np.ones((2, 16), np.int32)\n"
      "hlo = inference.encode.lower(g, s, ids, ids, 0 * ids, pooling='mean').as_text()\n"
      "from flax import nnx\n"
      "from bert_jax import layers\n"
      "packed = sum(isinstance(v, quantization.OnednnPacked) for _, v in nnx.iter_graph(q))\n"
      "dense = sum(isinstance(v, layers.Dense) for _, v in nnx.iter_graph(q))\n"
      "print('bert_jax_onednn_quantized_matmul' in hlo, packed == dense > 30)\n")
  out = {}
  for mode in ("on", "off"):
    printed, out[mode] = _embed_in_subprocess(code, mode, tmp_path)
    # On: every Dense kernel (6 layers x 6, the pooler) packed once and read packed.
    assert printed == f"{mode == 'on'} {mode == 'on'}"
  assert out["on"].shape == (12, 384)
  np.testing.assert_array_equal(out["on"], out["off"])


@needs_int8
@pytest.mark.parametrize("m,k,n", [(64, 768, 96), (5, 37, 16), (1, 384, 40), (130, 768, 768),
                                   (200, 256, 192), (700, 384, 512)])
def test_quantized_matmul_is_xlas_dynamic_int8_bit_for_bit(m, k, n):
  """onednn.quantized_matmul against what XLA computes for qwix's per-token quantization, the
  int8 product, the row and column rescale and the bias: equal bits, with a zero row (scale 1),
  a row whose largest value sits on the rounding tie, and K not a multiple of the vector; few
  rows split over column blocks (130 and 200 rows on two threads, three blocks uneven), many
  over row blocks (700), N not a whole number of column blocks (96, 40)."""
  qwix = pytest.importorskip("qwix")
  kx, kw, kb, ks = jax.random.split(jax.random.key(4), 4)
  x = jax.random.normal(kx, (m, k)) * jax.random.uniform(ks, (m, 1), maxval=5.0)
  x = x.at[0].set(0.0) if m > 1 else x
  if m > 2:
    x = x.at[1, :3].set(jnp.array([127.5, -63.75, 0.5]))
  w = qwix.quantize(jax.random.normal(kw, (k, n)), jnp.int8, channelwise_axes=(1,))
  bias = jax.random.normal(kb, (n,))

  def xla(x, qvalue, scale, bias):
    xq = qwix.quantize(x, jnp.int8, channelwise_axes=(0,))
    y = jax.lax.dot_general(xq.qvalue, qvalue, (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.int32).astype(jnp.float32)
    return y * xq.scale * scale + bias

  want = jax.jit(xla)(x, w.qvalue, w.scale, bias)
  got = jax.jit(onednn.quantized_matmul)(x, onednn.pack_int8(w.qvalue), w.scale, bias)
  assert got.shape == (m, n) and got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# bf16 products on oneDNN and on XLA take the same bf16 operands and sum in f32 in another order:
# their f32 results differ in the last bits, and a later bf16 rounding can then flip one ulp
# (2**-8 relative) of an operand further on: 2% of the largest value. f32 keeps 1e-5.
ENABLED = {jnp.float32: "f32_enabled", jnp.bfloat16: "bf16_enabled"}


def _assert_close_for(dtype, got, want):
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  atol = tol if dtype == jnp.float32 else tol * float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=atol)


def _assert_onednn_matches_xla(monkeypatch, dtype, fn, *args,
                               targets=("bert_jax_onednn_matmul",)):
  """jit(fn)(*args) with `dtype` products on oneDNN and on XLA: the custom-call `targets` in the
  program exactly when on, and every output leaf f32, shaped alike and close (_assert_close_for)."""
  results = {}
  for on in (True, False):
    monkeypatch.setattr(onednn, ENABLED[dtype], lambda on=on: on)
    f = jax.jit(lambda *a: fn(*a))  # a new function: jit's trace cache must not serve both
    hlo = f.lower(*args).as_text()
    assert [t in hlo for t in targets] == [on] * len(targets)
    results[on] = f(*args)
  for got, want in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False]),
                        strict=True):
    assert got.shape == want.shape and got.dtype == want.dtype == jnp.float32
    _assert_close_for(dtype, got, want)


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_products_on_onednn_match_xla_forward_and_backward(monkeypatch, dtype):
  """masked_attention with its products on oneDNN (f32 or bf16 inputs, one CPU device) against
  XLA's: context and the gradients of q, k and v, under a padding mask, attention dropout on."""
  from bert_jax import attention
  kq, kk, kv, kd = jax.random.split(jax.random.key(3), 4)
  q, k, v = (jax.random.normal(key, (2, 24, 3, 8)) for key in (kq, kk, kv))
  mask = (jnp.arange(24)[None, :] < jnp.array([[24], [15]]))[:, None, None, :]

  def loss(q, k, v):
    ctx, _ = attention.masked_attention(q, k, v, mask, dtype=dtype, dropout_rate=0.1,
                                        dropout_rng=kd)
    return jnp.sum(jnp.where(mask[:, 0, 0, :, None, None], ctx, 0.0) ** 2), ctx

  _assert_onednn_matches_xla(monkeypatch, dtype,
                             jax.grad(loss, argnums=(0, 1, 2), has_aux=True), q, k, v)


needs_core = pytest.mark.skipif(bool(REASON) or not onednn.core_usable(),
                                reason=f"attention_core needs the kernel and AVX-512: {REASON}")


@needs_core
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("mask_kind,rate", [("padding", 0.1), ("padding", 0.02), ("causal", 0.5)])
def test_attention_core_matches_xla_forward_and_backward(monkeypatch, dtype, mask_kind, rate):
  """masked_attention as onednn.attention_core (products, softmax and dropout in one custom
  VJP, the softmax kernels in the program) against XLA's ops: the context and the gradients of
  q, k and v, with a padding mask [B, 1, 1, M] or a causal one [1, 1, L, M], 37 keys (two
  16-lane blocks and 5 over), dropout at 0.02, 0.1 and 0.5 (a mask that differed anywhere
  would move the results far past the tolerance). Without dropout (inference, evaluation) the
  XLA path stays."""
  from bert_jax import attention
  kq, kk, kv, kd, kg = jax.random.split(jax.random.key(4), 5)
  q, k, v = (jax.random.normal(key, (3, 37, 2, 16)) for key in (kq, kk, kv))
  if mask_kind == "padding":
    mask = (jnp.arange(37)[None, :] < jnp.array([[37], [20], [1]]))[:, None, None, :]
  else:
    mask = (jnp.arange(37)[None, :] <= jnp.arange(37)[:, None])[None, None]
  weights = jax.random.normal(kg, (3, 37, 2, 16))

  def loss(q, k, v):
    ctx, _ = attention.masked_attention(q, k, v, mask, dtype=dtype, dropout_rate=rate,
                                        dropout_rng=kd if rate else None)
    return jnp.sum(ctx * weights), ctx

  _assert_onednn_matches_xla(monkeypatch, dtype,
                             jax.grad(loss, argnums=(0, 1, 2), has_aux=True), q, k, v,
                             targets=(onednn.SOFTMAX_TARGET, onednn.SOFTMAX_GRAD_TARGET))
  monkeypatch.setattr(onednn, ENABLED[dtype], lambda: True)
  no_dropout = jax.jit(lambda q: attention.masked_attention(q, k, v, mask, dtype=dtype)[0])
  assert onednn.SOFTMAX_TARGET not in no_dropout.lower(q).as_text()


@needs_core
def test_attention_core_keeps_layers_dropout_mask():
  """The kernel's dropout is layers.dropout's to the bit: with v the identity, the context is
  the dropped probabilities themselves, zero exactly where layers.counter_bits drops (shapes
  whose rows split unevenly over the threads, 70 keys)."""
  from bert_jax import layers
  b, n, l, m = 2, 3, 5, 70
  key = jax.random.key(11)
  q = jnp.zeros((b, n, l, m))  # uniform scores: every probability 1 / m before dropout
  k = jnp.zeros((b, n, m, m))
  v = jnp.broadcast_to(jnp.eye(m), (b, n, m, m))
  bias = jnp.zeros((b, 1, 1, m))
  ctx = onednn.attention_core(q, k, v, bias, layers.key_words(key), jnp.float32, 0.3)
  keep = np.asarray(layers.counter_bits(key, (b, n, l, m)) >= round(0.3 * 2.0**32))
  assert 0.55 < keep.mean() < 0.85
  np.testing.assert_array_equal(np.asarray(ctx) == 0.0, ~keep)
  np.testing.assert_allclose(np.asarray(ctx)[keep], 1.0 / m / 0.7, rtol=1e-5)


@needs_core
def test_attention_core_rejects_a_bias_of_another_shape():
  """A bias that is not [B or 1, 1, L or 1, M] stops with one sentence saying the shapes."""
  q = jnp.zeros((2, 1, 4, 16))
  bias = jnp.zeros((2, 1, 3, 4))  # 3 rows: neither 1 nor L
  with pytest.raises(Exception, match="softmax_dropout takes scores"):
    jax.block_until_ready(onednn.attention_core(q, q, q, bias, jnp.zeros((1,), jnp.uint32),
                                                jnp.float32, 0.0))


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("lead", [(3, 5), (2, 70)])
def test_dense_on_onednn_matches_xla_forward_and_backward(monkeypatch, lead, dtype):
  """A Dense layer on oneDNN (f32 or bf16 inputs, one CPU device) against XLA: outputs and the
  gradients of the input, kernel and bias (f32, the primal dtypes), for 15 rows and 140 (N =
  136: two 64-column runs split over threads, the last one with the 8 left over; its gradient
  products split K and N the same way)."""
  from flax import nnx

  from bert_jax import layers
  dense = layers.Dense((24,), (136,), ("embed",), ("mlp",), init_std=0.5, dtype=dtype,
                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  dense.bias[...] = jax.random.normal(jax.random.key(7), (136,))
  graphdef, state = nnx.split(dense)
  x = jax.random.normal(jax.random.key(8), (*lead, 24))

  def loss(state, x):
    y = nnx.merge(graphdef, state)(x)
    return jnp.sum(jnp.sin(y)), y

  _assert_onednn_matches_xla(monkeypatch, dtype,
                             jax.grad(loss, argnums=(0, 1), has_aux=True), state, x)


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_decoder_on_onednn_matches_xla_forward_and_backward(monkeypatch, dtype):
  """Embed.attend (the MLM decoder against the word-embedding table, read through its strides:
  no transposed copy of the table) on oneDNN against XLA: logits and the gradients of the
  input and the table, for 3 x 7 rows against 300 words (four 64-column runs and 44 over)."""
  from flax import nnx

  from bert_jax import layers
  embed = layers.Embed(300, 48, ("vocab", "embed"), init_std=0.5, dtype=dtype,
                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(embed)
  x = jax.random.normal(jax.random.key(9), (3, 7, 48))

  def loss(state, x):
    logits = nnx.merge(graphdef, state).attend(x)
    return jnp.sum(jax.nn.log_softmax(logits)[..., :5]), logits

  _assert_onednn_matches_xla(monkeypatch, dtype,
                             jax.grad(loss, argnums=(0, 1), has_aux=True), state, x)


@needs_kernel
def test_f32_model_attention_on_onednn_matches_xla(minilm_dir, mobydick_path, tmp_path):
  """The real f32 model on real sentences: attention's and the Dense layers' products on oneDNN
  (BERT_JAX_ONEDNN auto: one CPU device; few rows from the kernels' column panels), and with
  AVX-512 attention's core in one call, give XLA's embeddings (off), and the custom calls are
  in the program. One sentence at a time, whose panel products skip the length bucket's
  padding rows (layers.valid_rows), gives the same vectors as the batch."""
  code = (
      "import re, sys, numpy as np, bert_jax\n"
      "from bert_jax import attention, inference\n"
      "attention.FUSED_MIN_ROWS = 0  # the fused attention core at every size, for the check\n"
      f"texts = {corpus_sentences(mobydick_path, 12, min_words=5)!r}\n"
      f"m = bert_jax.BertModel.from_pretrained({str(minilm_dir)!r}, dtype='float32')\n"
      f"t = bert_jax.BertTokenizer.from_pretrained({str(minilm_dir)!r})\n"
      "np.save(sys.argv[1], np.stack([bert_jax.embed(m, t, texts, normalize=True),\n"
      "                               [bert_jax.embed(m, t, x, normalize=True) for x in texts]]))\n"
      "g, s = inference.inference_split(m)\n"
      "def hlo(batch, length):\n"
      "  ids = np.ones((batch, length), np.int32)\n"
      "  return inference.encode.lower(g, s, ids, ids, 0 * ids, pooling='mean').as_text()\n"
      "attention.FUSED_MIN_ROWS = 1280\n"
      "print('bert_jax_onednn_matmul' in hlo(8, 32), 'bert_jax_attention' in hlo(8, 32),\n"
      "      'bert_jax_attention' in hlo(32, 40), 'bert_jax_attention' in hlo(1, 40),\n"
      "      'panel_matmul' in hlo(1, 40), 'panel_matmul' in hlo(8, 32),\n"
      "      bool(re.search(r'panel_matmul.*tensor<1xi32>\\) ->', hlo(1, 40))))\n")
  out = {}
  fused = onednn.attention_usable(32)  # MiniLM's head size; the attention core in one call
  for mode in ("auto", "off"):
    printed, out[mode] = _embed_in_subprocess(code, mode, tmp_path)
    # The fused core from 1,280 query rows and up to 64 (FUSED_MIN_ROWS, FUSED_MAX_SMALL_ROWS);
    # Dense products from their kernels' column panels up to 128 rows (layers.PANEL_MAX_ROWS).
    on = mode == "auto" and fused
    panels = mode == "auto" and onednn.panel_count() > 1
    assert printed == f"{mode == 'auto'} False {on} {on} {panels} False {panels}"
  assert out["auto"].shape == (2, 12, 384)
  np.testing.assert_allclose(out["auto"], out["off"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["auto"][1], out["auto"][0], rtol=0, atol=1e-5)
  assert (np.sum(out["auto"] * out["off"], axis=2) > 0.99999).all()


@needs_kernel
def test_batch_one_predictions_skip_padding_with_the_same_logits(minilm_dir, mobydick_path,
                                                                 tmp_path):
  """Classification predictions one text at a time (each padded to its length bucket, the panel
  products skipping the padding rows) give the logits of the same texts predicted in one batch
  (every row computed), on the real MiniLM encoder and real sentences; the skip is in the
  batch-1 program only."""
  code = (
      "import re, sys, numpy as np, jax.numpy as jnp, bert_jax\n"
      "from bert_jax import inference\n"
      "from bert_jax.tasks import classification, common\n"
      f"texts = {corpus_sentences(mobydick_path, 8, min_words=5)!r}\n"
      f"m = bert_jax.BertForSequenceClassification.from_pretrained({str(minilm_dir)!r}, "
      "num_labels=3, dtype='float32')\n"
      f"t = bert_jax.BertTokenizer.from_pretrained({str(minilm_dir)!r})\n"
      "one = np.concatenate([classification.predict_texts(m, t, [x], batch_size=1)\n"
      "                      for x in texts])\n"
      "np.save(sys.argv[1], np.stack([one, classification.predict_texts(m, t, texts)]))\n"
      "g, s = inference.inference_split(m)\n"
      "def skips(batch):\n"
      "  x = {k: jnp.ones((batch, 24), jnp.int32) for k in ('input_ids', 'attention_mask',\n"
      "                                                       'token_type_ids')}\n"
      "  hlo = common._apply.lower(g, classification._logits, s, x, True).as_text()\n"
      "  return bool(re.search(r'panel_matmul.*tensor<1xi32>\\) ->', hlo))\n"
      "print(skips(1), skips(8))\n")
  printed, logits = _embed_in_subprocess(code, "auto", tmp_path)
  assert printed == f"{onednn.panel_count() > 1} False"
  assert logits.shape == (2, 8, 3)
  np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)


@needs_kernel
def test_small_calls_use_the_spinning_helper_with_the_same_numbers(minilm_dir, mobydick_path,
                                                                    tmp_path):
  """A batch-1 embed (every product at most 64 rows) gives its helper pieces to the kernels' own
  spinning thread, created on first use; a batch of 12 (>= 192 rows a product) and spin time 0
  never do; the embeddings are the same bits either way (the same pieces, other threads)."""
  code = (
      "import os, sys, numpy as np, bert_jax\n"
      "from bert_jax import onednn\n"
      "def spinners():\n"
      "  return sum(open(f'/proc/self/task/{t}/comm').read().strip() == 'bert_jax_spin'\n"
      "             for t in os.listdir('/proc/self/task'))\n"
      f"texts = {corpus_sentences(mobydick_path, 12, min_words=5)!r}\n"
      f"m = bert_jax.BertModel.from_pretrained({str(minilm_dir)!r}, dtype='float32')\n"
      f"t = bert_jax.BertTokenizer.from_pretrained({str(minilm_dir)!r})\n"
      "batch = bert_jax.embed(m, t, [texts[0]] * 12)  # one batch of 12 (16 rows) x 16+ tokens\n"
      "counts = [spinners()]\n"
      "onednn.set_spin_micros(0)\n"
      "off = np.stack([bert_jax.embed(m, t, x) for x in texts[:4]])\n"
      "counts.append(spinners())\n"
      "onednn.set_spin_micros(200)\n"
      "on = np.stack([bert_jax.embed(m, t, x) for x in texts[:4]])\n"
      "counts.append(spinners())\n"
      "np.save(sys.argv[1], np.stack([on, off]))\n"
      "print(*counts)\n")
  printed, out = _embed_in_subprocess(code, "auto", tmp_path)
  assert printed == "0 0 1"
  np.testing.assert_array_equal(out[0], out[1])
  with pytest.raises(ConfigError, match="whole number of microseconds"):
    onednn.set_spin_micros(-1)


@pytest.mark.skipif(not onednn.attention_usable(16), reason="the fused attention core needs "
                    "the oneDNN kernel library and AVX-512")
@pytest.mark.parametrize("b,l,m,n,h,per_query", [(1, 40, 40, 12, 32, False),
                                                 (3, 17, 17, 4, 16, True),
                                                 (2, 5, 33, 3, 48, False), (2, 1, 1, 2, 80, False),
                                                 (2, 130, 130, 2, 64, True)])
def test_fused_attention_core_matches_xla(b, l, m, n, h, per_query):
  """onednn.attention (inference's attention core in one call) against XLA's masked_attention:
  padded keys, masks per query, query counts not a multiple of its 4-row passes, key counts not
  a multiple of 16, head sizes 16-80."""
  from bert_jax import attention
  kq, kk, kv, km = jax.random.split(jax.random.key(l * m + h), 4)
  q = jax.random.normal(kq, (b, l, n, h))
  k = jax.random.normal(kk, (b, m, n, h))
  v = jax.random.normal(kv, (b, m, n, h))
  lengths = np.arange(b) % m + max(1, m - 3)
  mask = jnp.asarray(np.arange(m)[None, :] < lengths[:, None])[:, None, None, :]
  if per_query:  # random visibility, each query still seeing its own position
    mask = (mask & jax.random.bernoulli(km, 0.7, (b, 1, l, m))) | jnp.eye(l, m, dtype=bool)
  want, _ = attention.masked_attention(q, k, v, mask, dtype=jnp.float32)
  bias = jnp.where(jnp.broadcast_to(mask, (b, 1, mask.shape[2], m)), 0.0, -1e9)
  got = jax.jit(onednn.attention, static_argnums=4)(q, k, v, bias, 1.0 / np.sqrt(h))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=3e-6)


def test_bad_choice_is_one_sentence():
  with pytest.raises(ConfigError, match="BERT_JAX_ONEDNN='fast' is not one of auto, on, off"):
    onednn.int8_enabled({onednn.ENV: "fast"})
  assert not onednn.int8_enabled({onednn.ENV: "off"})
  assert not onednn.f32_enabled({onednn.ENV: "off"})


def test_bad_spin_time_is_one_sentence_before_the_library_loads(monkeypatch):
  monkeypatch.setenv(onednn.SPIN_ENV, "fast")
  with pytest.raises(ConfigError, match=r"spin time 'fast' \(\$BERT_JAX_ONEDNN_SPIN_US or "
                     r"set_spin_micros\) is not a whole number of microseconds"):
    onednn._load_once.__wrapped__()  # uncached: it stops before loading or registering anything
  with pytest.raises(ConfigError, match="in \\[0, 1000000\\]; use 0 to never spin"):
    onednn.set_spin_micros(2_000_000)


def test_missing_onednn_says_what_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"pip install bert-jax\[onednn\]"):
    onednn.find_onednn({onednn.ROOT_ENV: str(tmp_path)}, roots_only=True)


def test_missing_compiler_says_what_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="no C\\+\\+ compiler"):
    onednn._compiler({"CXX": str(tmp_path / "no-such-g++"), "PATH": str(tmp_path)})


@needs_kernel
def test_build_is_cached_per_user(tmp_path):
  env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
  first = onednn.build(env)
  assert first.startswith(str(tmp_path / "bert_jax" / "kernels"))
  stamp = os.path.getmtime(first)
  assert onednn.build(env) == first and os.path.getmtime(first) == stamp
  assert [p for p in os.listdir(os.path.dirname(first)) if p.endswith(".so")] == [
      os.path.basename(first)]


def test_a_failed_build_is_logged_and_a_missing_onednn_is_not(monkeypatch, caplog):
  def failing(message, error):
    def build(environ=os.environ):
      raise error(message)
    return build

  monkeypatch.setattr(onednn, "build", failing("building the oneDNN kernel failed (test)",
                                               RuntimeError))
  with caplog.at_level("WARNING"):
    assert onednn._open_library() == "building the oneDNN kernel failed (test)"
  assert "did not build; every product runs on XLA" in caplog.text
  caplog.clear()
  monkeypatch.setattr(onednn, "build", lambda environ=os.environ: "/nonexistent/kernel.so")
  with caplog.at_level("WARNING"):
    assert "/nonexistent/kernel.so" in onednn._open_library()  # built but does not load
  assert "did not build; every product runs on XLA" in caplog.text
  caplog.clear()
  monkeypatch.setattr(onednn, "build", failing("no oneDNN with headers found (test)",
                                               FileNotFoundError))
  with caplog.at_level("WARNING"):
    assert onednn._open_library() == "no oneDNN with headers found (test)"
  assert caplog.text == ""


def test_int8_activations_without_the_kernel_warn_and_still_compute(monkeypatch, caplog):
  from flax import nnx

  import bert_jax
  from bert_jax import quantization
  pytest.importorskip("qwix")
  model = bert_jax.BertModel(bert_jax.BertConfig(vocab_size=50, hidden_size=16,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32),
                             rngs=nnx.Rngs(params=0))
  monkeypatch.setattr(onednn, "_load", lambda: "no C++ compiler (test)")
  monkeypatch.setattr(onednn, "int8_reason", lambda: "no C++ compiler (test)")
  monkeypatch.setenv(onednn.ENV, "auto")
  with caplog.at_level("WARNING"):
    q = quantization.quantize(model, "int8_dynamic")
  assert "int8 matmuls run on XLA" in caplog.text and "no C++ compiler (test)" in caplog.text
  ids = np.arange(8, dtype=np.int32).reshape(1, 8)
  hlo = jax.jit(lambda i: q(i).last_hidden_state).lower(ids).as_text()
  assert "bert_jax_onednn_matmul" not in hlo  # XLA's dot, no custom call
  monkeypatch.setenv(onednn.ENV, "on")
  with pytest.raises(ConfigError, match="the oneDNN kernel cannot be used: no C\\+\\+ compiler"):
    onednn.matmul(ids, ids, jnp.int32)
  with pytest.raises(ConfigError, match="BERT_JAX_ONEDNN=on but oneDNN cannot compute the int8"):
    onednn.int8_enabled()


def test_bf16_products_go_to_onednn_only_on_native_bf16():
  """bf16 products on a CPU that only emulates bf16 stay on XLA, even with BERT_JAX_ONEDNN=on
  (nothing to stop for: its dtype "auto" is f32); off keeps XLA everywhere."""
  emulated = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})
  for mode in onednn.CHOICES:
    assert not onednn.bf16_enabled({onednn.ENV: mode}, flags=emulated)
  assert not onednn.bf16_enabled({onednn.ENV: "off"}, flags=emulated | {"avx512_bf16"})
  if not REASON:
    assert onednn.bf16_enabled({onednn.ENV: "auto"}, flags=emulated | {"amx_bf16"}) == (
        jax.device_count() == 1)


def test_no_int8_dot_instructions_keep_xla():
  """Without VNNI / AMX oneDNN's int8 pairs saturate in 16 bits: XLA's integers are kept."""
  reason = onednn.int8_reason(frozenset({"avx2", "fma", "avx512_bf16"}))
  assert reason.startswith("this CPU has no int8 dot-product instructions (avx512_vnni")


@needs_kernel
def test_bf16_pretraining_step_on_onednn_tracks_xla(pretrain_dataset, vocab_path, monkeypatch):
  """The tiny model's bf16 pretraining step on real Bible batches, its Dense and attention
  products on oneDNN (where the CPU has native bf16: layers.on_onednn) against XLA's dots: the
  custom call is in the program and three steps' losses and gradient norms agree to bf16's
  precision (the same bf16 operands, f32 sums in another order)."""
  from bert_jax import pretraining
  from bert_jax.configs import pretrain as pretrain_configs
  config = pretrain_configs.get_config("tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path))
  config.model.update(dtype="bfloat16")
  it = pretraining.make_task(config).train_iter()
  batches = [next(it) for _ in range(3)]
  runs = {}
  for on in (True, False):
    monkeypatch.setattr(onednn, "bf16_enabled", lambda on=on: on)
    _, _, metrics, hlo = run_train_steps(config, batches)
    assert ("bert_jax_onednn_matmul" in hlo) == on
    assert (onednn.SOFTMAX_GRAD_TARGET in hlo) == (on and onednn.core_usable())
    runs[on] = np.array(metrics)
  assert np.all(np.isfinite(runs[True])) and runs[True][0, 0] > 1.0
  np.testing.assert_allclose(runs[True], runs[False], rtol=2e-3)


@needs_kernel
def test_bf16_model_on_onednn_matches_xla(minilm_dir, mobydick_path, monkeypatch):
  """The real model in bf16 on real sentences, its products on oneDNN (one sentence at a time
  from bf16 column panels) and on XLA: the same embeddings to bf16's precision (cosine >=
  0.9999), one at a time as in the batch, the custom calls in the program."""
  import bert_jax
  from bert_jax import inference
  texts = corpus_sentences(mobydick_path, 12, min_words=5)
  model = bert_jax.BertModel.from_pretrained(minilm_dir, dtype="bfloat16")
  tokenizer = bert_jax.BertTokenizer.from_pretrained(minilm_dir)
  ids = np.ones((4, 32), np.int32)
  out = {}
  for on in (True, False):
    jax.clear_caches()  # encode is jitted: trace it again under the other choice
    inference._CAST_STATES.pop(model, None)  # and split the model again (panels or none)
    monkeypatch.setattr(onednn, "bf16_enabled", lambda on=on: on)
    g, s = inference.inference_split(model)
    hlo = inference.encode.lower(g, s, ids, ids, 0 * ids, pooling="mean").as_text()
    assert ("bert_jax_onednn_matmul" in hlo) == on
    one = np.ones((1, 40), np.int32)
    hlo = inference.encode.lower(g, s, one, one, 0 * one, pooling="mean").as_text()
    assert bool(re.search(r"panel_matmul.*tensor<40x384xbf16>", hlo)) == on
    out[on] = bert_jax.embed(model, tokenizer, texts, normalize=True)
    out[on, "one"] = np.stack([bert_jax.embed(model, tokenizer, t, normalize=True)
                               for t in texts])
  jax.clear_caches()  # nothing traced under the patched choice outlives the test
  for got in (out[True], out[True, "one"], out[False, "one"]):
    cosines = np.sum(got * out[False], axis=-1)
    assert got.shape == (12, 384) and cosines.min() >= 0.9999, cosines
