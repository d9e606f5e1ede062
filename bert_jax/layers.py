"""Building blocks shared by the encoder and the heads.

Every parameter is an `nnx.Param` whose metadata `logical_axes` names each dimension from the
vocabulary in `sharding.py` (`vocab`, `embed`, `mlp`, `heads`, `kv`, ...). The mapping from those
names to mesh axes lives only in `sharding.py` (the config's `mesh.rules`); nothing here knows
about meshes.

Matmuls take their inputs in the config's compute dtype (bf16 on accelerators and on CPUs with
avx512_bf16) and always accumulate and return f32; LayerNorm, softmax and activations run in f32.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax import device_dtype, onednn

LOGICAL_AXES_KEY = "logical_axes"


def param(rngs: nnx.Rngs, init, shape: Sequence[int], logical_axes: Sequence[str | None],
          dtype) -> nnx.Param:
  """Creates a parameter carrying its logical axis names (one per dimension).

  Each call draws a new key from `rngs` (a fixed key for every parameter would make all layers
  identical), so `rngs` is required; under `nnx.eval_shape` nothing is computed with it.
  """
  if len(shape) != len(logical_axes):
    raise ValueError(f"shape {shape} and logical axes {logical_axes} differ in rank")
  if rngs is None:
    raise TypeError("Creating a model needs rngs=nnx.Rngs(params=SEED) so that every parameter "
                    "gets its own key; bert_jax.create_model(cls, config, seed) passes one.")
  return nnx.Param(init(rngs.params(), tuple(shape), dtype),
                   **{LOGICAL_AXES_KEY: tuple(logical_axes)})


def _mm(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _dims(nb: int, lhs_contract, rhs_contract):
  batch = tuple(range(nb))
  return ((tuple(lhs_contract), tuple(rhs_contract)), (batch, batch))


# XLA:CPU runs a bf16 dot on its fast bf16-input/f32-accumulate kernels (YNNPACK) only when the
# lhs contracts its last dim and the rhs its first (row-major). It folds a plain transpose of an
# operand into the dot's dimension numbers and then upcasts that "transposed" dot to f32 (about
# 2x slower, plus a convert of both operands); an optimization barrier does not stop it (XLA:CPU
# drops barriers early). Splitting the transposed axis in two (a reshape the folding does not see
# through) makes XLA materialise the transpose as a bf16 copy and keeps the dot on the fast path.
# The products and their f32 sums are the same. In f32 the copy is pure cost: XLA's f32 dot reads
# the transposed operand through its dimension numbers (BERT-base f32 training step 2.40 vs 2.76
# s, 3 interleaved rounds on a 2-core Xeon without avx512_bf16, benchmarks/RESULTS.md), so f32
# dots keep the plain transposed form.


def _mm_nt(a_xMxK: jax.Array, b_xNxK: jax.Array, dtype) -> jax.Array:
  """a @ b^T -> [..., M, N], f32 accumulation."""
  nb, n, k = a_xMxK.ndim - 2, b_xNxK.shape[-2], b_xNxK.shape[-1]
  a, b = a_xMxK.astype(dtype), b_xNxK.astype(dtype)
  if jnp.dtype(dtype) == jnp.float32 and b.ndim == a.ndim:
    return jax.lax.dot_general(a, b, _dims(nb, (nb + 1,), (nb + 1,)),
                               preferred_element_type=jnp.float32)
  if n % 2 or b.ndim != a.ndim:
    return _mm(a, jnp.swapaxes(b, -1, -2), dtype)
  b_xKxN2x2 = jnp.moveaxis(b.reshape(*b.shape[:-2], n // 2, 2, k), -1, -3)
  y = jax.lax.dot_general(a, b_xKxN2x2, _dims(nb, (nb + 1,), (nb,)),
                          preferred_element_type=jnp.float32)
  return y.reshape(*y.shape[:-2], n)


def _mm_tn(a_xMxK: jax.Array, b_xMxN: jax.Array, dtype) -> jax.Array:
  """a^T @ b -> [..., K, N], f32 accumulation."""
  nb, m, k = a_xMxK.ndim - 2, a_xMxK.shape[-2], a_xMxK.shape[-1]
  a, b = a_xMxK.astype(dtype), b_xMxN.astype(dtype)
  if jnp.dtype(dtype) == jnp.float32 and b.ndim == a.ndim:
    return jax.lax.dot_general(a, b, _dims(nb, (nb,), (nb,)),
                               preferred_element_type=jnp.float32)
  if m % 2 or b.ndim != a.ndim:
    return _mm(jnp.swapaxes(a, -1, -2), b, dtype)
  a_xKxM2x2 = jnp.moveaxis(a.reshape(*a.shape[:-2], m // 2, 2, k), -1, -3)
  b_xM2x2xN = b.reshape(*b.shape[:-2], m // 2, 2, b.shape[-1])
  return jax.lax.dot_general(a_xKxM2x2, b_xM2x2xN, _dims(nb, (nb + 1, nb + 2), (nb, nb + 1)),
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def matmul(a_xMxK: jax.Array, b: jax.Array, dtype, transpose_b: bool = False) -> jax.Array:
  """(Batched) a @ b, or a @ b^T with `transpose_b` (b [..., N, K]): `dtype` inputs and f32
  accumulation, forward AND backward.

  JAX's own transpose of a mixed-precision dot feeds the f32 cotangent against the bf16 operand,
  which falls off the fast bf16-input/f32-accumulate path (4x slower backward on avx512_bf16
  CPUs); here both backward matmuls take `dtype` inputs and accumulate in f32 too, and every
  transposed operand is materialised so that XLA:CPU keeps the dot in bf16 (see _mm_nt).
  """
  return _mm_nt(a_xMxK, b, dtype) if transpose_b else _mm(a_xMxK, b, dtype)


def _matmul_fwd(a, b, dtype, transpose_b):
  a_c, b_c = a.astype(dtype), b.astype(dtype)
  y = _mm_nt(a_c, b_c, dtype) if transpose_b else _mm(a_c, b_c, dtype)
  # Zero-size markers carry the primal dtypes so cotangents come back in them.
  return y, (a_c, b_c, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _matmul_bwd(dtype, transpose_b, res, g):
  a_c, b_c, a_marker, b_marker = res
  g = g.astype(dtype)
  if transpose_b:  # y = a b^T: da = g b, db = g^T a.
    da, db = _mm(g, b_c, dtype), _mm_tn(g, a_c, dtype)
  else:  # y = a b: da = g b^T, db = a^T g.
    da, db = _mm_nt(g, b_c, dtype), _mm_tn(a_c, g, dtype)
  if db.ndim > b_c.ndim:  # `b` was broadcast over leading batch dims of `a`.
    db = db.reshape(-1, *b_c.shape).sum(0)
  return da.astype(a_marker.dtype), db.astype(b_marker.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def truncated_normal(stddev: float, cutoff: float | None = None):
  """BERT's initialiser (cutoff None), or ModernBERT's (`initializer_cutoff_factor`).

  BERT initialises every weight with a normal truncated at two standard deviations (flax's
  initializer, which scales `stddev` to the truncated distribution's). ModernBERT uses
  torch's `trunc_normal_(std=stddev, a=-cutoff * stddev, b=cutoff * stddev)`: `stddev` is the
  untruncated normal's, cut at `cutoff` of them.
  """
  if cutoff is None:
    return nnx.initializers.truncated_normal(stddev=stddev, lower=-2.0, upper=2.0)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -cutoff, cutoff, shape, dtype) * jnp.asarray(
        stddev, dtype)

  return init


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective 32-bit integer hash with full avalanche (Wellons' `lowbias32` constants)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def key_words(key: jax.Array) -> jax.Array:
  """A PRNG key's data as the uint32 words counter_bits hashes (and kernels that repeat it)."""
  return jax.random.key_data(key).reshape(-1).astype(jnp.uint32)


def counter_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """uint32 bits for each element of `shape`: a hash of the key and the element's index.

  Elementwise in the (logical) index, so it fuses into its consumer with no memory traffic and
  gives the same bits on any sharding. `jax.random` on CPU lowers threefry as a rolled loop over
  whole arrays (memory-bound: about 10% of a BERT-base CPU train step went to dropout masks).
  Each dimension's index is mixed in turn, so there is no wrap-around at 2**32 elements.
  """
  words = key_words(key)
  h = _mix32(words[0] ^ jnp.uint32(0x9E3779B9))
  for w in words[1:]:
    h = _mix32(h ^ w)
  for d in range(len(shape)):
    index = jax.lax.broadcasted_iota(jnp.uint32, tuple(shape[:d + 1]), d)
    h = _mix32(h[..., None] ^ (index * jnp.uint32(0x9E3779B9) + jnp.uint32(d + 1)))
  return h


def drop_threshold(rate: float) -> int:
  """Dropout's threshold: an element is dropped where its counter hash is below it (both the
  XLA path here and onednn.attention_core's kernel)."""
  return min(round(rate * 2.0**32), 2**32 - 1)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout (drop probability `rate` to 2**-32); `key=None` means deterministic."""
  if key is None or rate == 0.0:
    return x
  drop_below = jnp.uint32(drop_threshold(rate))
  keep = counter_bits(key, x.shape) >= drop_below
  return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros_like(x))


def _gelu_erf(x: jax.Array) -> jax.Array:
  """Exact GELU as BERT and PyTorch write it, x * (1 + erf(x / sqrt 2)) / 2.

  `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU evaluates with an exp and
  a division per element: forward + backward on a BERT-base FFN activation took 8.4 ms against
  3.0 ms here. The values agree with it and with torch's GELU to ~1e-6.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def activation(name: str):
  return {
      "gelu": _gelu_erf,
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "tanh": jnp.tanh,
      "silu": jax.nn.silu,
      "swish": jax.nn.silu,
  }[name]


def f32_on_onednn(dtype) -> bool:
  """Whether products computed in `dtype` are f32 ones on oneDNN (onednn.batched_matmul,
  gradients too, split over XLA's threads): f32, compiled for the CPU, one device, a usable
  kernel (onednn.f32_enabled; BERT_JAX_ONEDNN=off keeps XLA). The fused AdamW needs it."""
  return (jnp.dtype(dtype) == jnp.float32 and device_dtype.target_backend() == "cpu"
          and onednn.f32_enabled())


def on_onednn(dtype) -> bool:
  """Whether Dense and attention products with `dtype` inputs run on oneDNN: f32 where
  f32_on_onednn, bf16 on a CPU with native bf16 (onednn.bf16_enabled), else XLA's dot."""
  if jnp.dtype(dtype) == jnp.bfloat16:
    return device_dtype.target_backend() == "cpu" and onednn.bf16_enabled()
  return f32_on_onednn(dtype)


def product(a_xMxK: jax.Array, b: jax.Array, dtype, transpose_b: bool = False) -> jax.Array:
  """(Batched) a @ b, or a @ b^T with `transpose_b`, in `dtype` with f32 results, forward and
  backward: oneDNN's where on_onednn (f32 on a Xeon without avx512_bf16, where "auto" is f32:
  BERT-base's f32 training step 5-10% faster, batch-1 f32 classification 1.3x, MiniLM embeddings
  1.16x, benchmarks/RESULTS.md run X; bf16 on CPUs with native bf16, run AD), else `matmul`.
  Dense layers, attention's batched products and tied decoders (Embed.attend) all go here."""
  if on_onednn(dtype):
    return onednn.batched_matmul(a_xMxK, b, transpose_b, dtype)
  return matmul(a_xMxK, b, dtype, transpose_b=transpose_b)


class ColumnPanels(nnx.Variable):
  """A copy of a Dense kernel for inference on oneDNN, as column panels [P, K, N / P]
  (onednn.column_panels), in the layer's `panels` attribute: inference.inference_split's form of
  the model has them. The layer's products of at most PANEL_MAX_ROWS rows read them (forward
  only; oneDNN's gemm ran faster on dense panels at few rows, benchmarks/RESULTS.md run AB)."""


# How many leading rows of each Dense input matter, while a batch of one sequence is traced
# (`valid_rows`; inference.skipping_padding: the position after its last real token, so the
# rows after it are the length bucket's padding). Panel products multiply only those rows and
# write zeros for the rest; elsewhere it is None and every row is computed.
_VALID_ROWS: contextvars.ContextVar = contextvars.ContextVar("bert_jax_valid_rows", default=None)


@contextlib.contextmanager
def valid_rows(rows: jax.Array):
  """Within it, panel products of the Dense layers being traced skip their input rows from
  `rows` (an int32 scalar) on, returning zeros there. For a model over one right-padded
  sequence, where each row of a Dense input is a token (or fewer rows, as the pooler's CLS) and
  padding tokens reach real ones only as masked attention keys."""
  token = _VALID_ROWS.set(rows)
  try:
    yield
  finally:
    _VALID_ROWS.reset(token)


# Rows up to which a Dense layer with panels uses them: MiniLM's batch-1 encode 1.33 / 1.11 /
# 1.08 / 1.05x faster at 16 / 40 / 64 / 128 tokens; batch 32 moved 0.79-1.04x (run AB).
PANEL_MAX_ROWS = 128


class Dense(nnx.Module):
  """y = x . W + b contracting the trailing `len(in_shape)` dims of x with W[*in_shape, *out_shape].

  Multi-dimensional in/out shapes let attention keep heads as their own axis (`[D, N, H]`), so
  heads can be sharded over `tensor` without reshapes of sharded dims.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               in_axes: Sequence[str | None], out_axes: Sequence[str | None], *,
               init_std: float, dtype, param_dtype, rngs: nnx.Rngs, use_bias: bool = True,
               init_cutoff: float | None = None):
    self.n_in = len(in_shape)
    self.dtype = dtype
    self.kernel = param(rngs, truncated_normal(init_std, init_cutoff), (*in_shape, *out_shape),
                        (*in_axes, *out_axes), param_dtype)
    self.bias = (param(rngs, nnx.initializers.zeros, tuple(out_shape), tuple(out_axes),
                       param_dtype) if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    if not isinstance(self.kernel, nnx.Param):  # An int8 qwix kernel (bert_jax.quantization).
      from bert_jax import quantization
      return quantization.dense(self, x)
    kernel = self.kernel[...]
    in_shape, out_shape = kernel.shape[:self.n_in], kernel.shape[self.n_in:]
    k, n = math.prod(in_shape), math.prod(out_shape)
    lead = x.shape[:x.ndim - self.n_in]
    panels = getattr(self, "panels", None)  # ColumnPanels, in inference_split's form only
    if panels is not None and math.prod(lead) <= PANEL_MAX_ROWS:
      y_MxN = onednn.panel_matmul(x.reshape(-1, k), panels[...], _VALID_ROWS.get())
    else:
      y_MxN = product(x.reshape(-1, k), kernel.reshape(k, n), self.dtype)
    y = y_MxN.reshape(*lead, *out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in f32; `use_bias=False` drops the bias (ModernBERT's
  `norm_bias: false`)."""

  def __init__(self, size: int, eps: float, *, param_dtype, rngs: nnx.Rngs,
               axis_name: str = "embed", use_bias: bool = True):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (size,), (axis_name,), param_dtype)
    self.bias = (param(rngs, nnx.initializers.zeros, (size,), (axis_name,), param_dtype)
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.bias is None:
      return y * self.scale[...].astype(jnp.float32)
    return y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class Embed(nnx.Module):
  """A lookup table [num, features]; `attend` multiplies by its transpose (tied decoders)."""

  def __init__(self, num: int, features: int, axes: tuple[str, str], *, init_std: float, dtype,
               param_dtype, rngs: nnx.Rngs, init_cutoff: float | None = None):
    self.dtype = dtype
    self.embedding = param(rngs, truncated_normal(init_std, init_cutoff), (num, features), axes,
                           param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    if not isinstance(self.embedding, nnx.Param):  # An int8 qwix table (bert_jax.quantization).
      from bert_jax import quantization
      return quantization.embed(self.embedding, ids)
    return jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)

  def attend(self, x: jax.Array) -> jax.Array:
    """x[..., D] -> logits[..., num] against the table, f32 accumulation."""
    if not isinstance(self.embedding, nnx.Param):
      from bert_jax import quantization
      return quantization.attend(self.embedding, x, self.dtype)
    table_VxD = self.embedding[...]
    logits_MxV = product(x.reshape(-1, x.shape[-1]), table_VxD, self.dtype, transpose_b=True)
    return logits_MxV.reshape(*x.shape[:-1], table_VxD.shape[0])
