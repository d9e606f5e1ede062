"""Post-training int8 quantization of any bert_jax model through Google's qwix.

    qmodel = quantization.quantize(model, "int8")              # int8 weights
    qmodel = quantization.quantize(model, "int8", activations=True)  # and int8 activations

Every `layers.Dense` kernel becomes a `qwix.QArray` (int8 values, one f32 scale per output
channel, absmax calibration: `qwix.quantize`), and so does every `layers.Embed` table (one scale
per row: a token's vector). LayerNorms, biases and the model's other parameters stay as they are.
The quantized layers compute through `qwix.dot_general` (Dense, the tied MLM decoder) and
`qwix.dequantize` of the gathered rows (embedding lookups): nothing here computes a scale or
rounds a value itself (the one exception, on oneDNN below, repeats XLA's values for qwix's).

Weight-only (the default): qwix dequantizes each kernel to the compute dtype inside the jitted
function and runs the float matmul, which XLA fuses; the weights are stored and moved as int8 (a
quarter of f32), the arithmetic is what it was. With `activations=True` each Dense input is
quantized per token on the fly (dynamic range) and the matmul runs int8 x int8 -> int32, then is
rescaled; on CPU the int8 product runs on oneDNN's int8 dot-product kernels when they are
available (bert_jax/onednn.py: 1.5-2.4x XLA:CPU's bf16 matmul speed, the same integers), and each
kernel is also kept packed in oneDNN's blocked layout (an `OnednnPacked` variable beside it, made
once here instead of on every call; this CPU's layout, so it is not part of what a model saves).
With packed kernels the whole Dense (quantize each token, int8 product, rescale, bias) is one
oneDNN call (onednn.quantized_matmul) that computes XLA's values for qwix.quantize and the
rescale bit for bit, reading each row once.

Why not `qwix.quantize_model` (qwix's interception of `jax.lax.dot_general`): it finds a weight by
following the traced value back to the module's parameter and swaps the parameter in during the
first call, and bert_jax's Dense multiplies inside a `jax.custom_vjp` (layers.matmul, which keeps
the bf16 backward on XLA:CPU's fast path). Inside that trace the parameter is out of reach and the
swap fails (flax TraceContextError). Quantizing the parameters once, explicitly, keeps the model
pure and makes the int8 values visible in its state.
"""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax import layers, onednn
from bert_jax.errors import ConfigError, ModelFileError

MODES = ("none", "int8", "int8_dynamic")  # int8_dynamic: int8 with activations=True


class OnednnPacked(nnx.Variable):
  """An int8 Dense kernel in oneDNN's blocked layout for this CPU (onednn.pack_int8): a cache
  of the kernel beside it, read by the int8 x int8 product; not a parameter, never saved."""


def _qwix():
  try:
    import qwix
  except ImportError:
    raise ConfigError("quantize='int8' needs Google's qwix; install it with "
                      "`pip install bert-jax[quant]` (or `pip install qwix`).") from None
  return qwix


def is_quantized(array) -> bool:
  return type(array).__name__ == "QArray"


def quantize(model: nnx.Module, mode: str = "int8", *, activations: bool = False) -> nnx.Module:
  """A quantized copy of `model` (the original is untouched); mode "none" returns the model.

  Args:
    model: any bert_jax model (BERT or ModernBERT, with or without a head).
    mode: "int8", "int8_dynamic" (int8 with activations=True) or "none".
    activations: also quantize each Dense input per token (int8 x int8 matmuls).
  Raises:
    ConfigError: an unknown mode, or qwix missing.
    ModelFileError: a model that is already quantized or has no bert_jax Dense layers.
  """
  if mode not in MODES:
    raise ConfigError(f"quantize={mode!r} is not one of {', '.join(MODES)}.")
  if mode == "none":
    return model
  activations = activations or mode == "int8_dynamic"
  qwix = _qwix()
  denses = [m for _, m in nnx.iter_graph(model) if isinstance(m, layers.Dense)]
  if not denses:
    raise ModelFileError(f"{type(model).__name__} has no bert_jax Dense layers, so there is "
                         f"nothing int8 quantization knows how to handle; quantize a bert_jax "
                         f"model (BertModel, BertFor..., ModernBert...).")
  if any(is_quantized(m.kernel) for m in denses):
    raise ModelFileError(f"{type(model).__name__} is already quantized; quantize the float model "
                         f"once (load it again from its checkpoint).")
  bad = sorted({str(m.kernel[...].dtype) for m in denses
                if not jnp.issubdtype(m.kernel[...].dtype, jnp.floating)})
  if bad:
    raise ModelFileError(f"{type(model).__name__} holds {', '.join(bad)} kernels; int8 "
                         f"quantization needs float weights.")
  if activations and jax.default_backend() == "cpu" and onednn.choice() != "off":
    reason = onednn.int8_reason()
    if reason:  # Correct either way, but XLA:CPU's int8 product is slower than its bf16 one.
      logging.warning("int8 activations: the int8 matmuls run on XLA, slower than bf16 on this "
                      "CPU, because oneDNN cannot compute them here: %s.", reason)
  pack = activations and onednn.int8_on_onednn()
  model = nnx.clone(model)
  for module in [m for _, m in nnx.iter_graph(model)]:
    if isinstance(module, layers.Dense):
      kernel = module.kernel[...]
      out_axes = tuple(range(module.n_in, kernel.ndim))  # One scale per output channel.
      module.kernel = qwix.quantize(kernel, jnp.int8, channelwise_axes=out_axes)
      module.quantize_activations = bool(activations)
      if pack and module.kernel.zero_point is None:
        k = math.prod(kernel.shape[:module.n_in])
        module.onednn_packed = OnednnPacked(
            onednn.pack_int8(module.kernel.qvalue.reshape(k, -1)))
    elif isinstance(module, layers.Embed):  # One scale per row (a token's vector).
      module.embedding = qwix.quantize(module.embedding[...], jnp.int8, channelwise_axes=(0,))
  return model


def dense(layer: layers.Dense, x: jax.Array) -> jax.Array:
  """layers.Dense.__call__ for an int8 kernel: [..., *in] -> [..., *out] f32."""
  qwix = _qwix()
  q = layer.kernel
  in_shape, out_shape = q.shape[:layer.n_in], q.shape[layer.n_in:]
  k, n = math.prod(in_shape), math.prod(out_shape)
  lead = x.shape[:x.ndim - layer.n_in]
  q_KxN = q.reshape(k, n)
  x_MxK = x.reshape(-1, k)
  dims = (((1,), (0,)), ((), ()))
  if getattr(layer, "quantize_activations", False):
    packed = getattr(layer, "onednn_packed", None)
    if packed is not None and q_KxN.zero_point is None and onednn.int8_enabled():
      # Quantize, int8 product, rescale and bias in one oneDNN call: XLA's values, each row
      # read once (XLA runs them as separate passes and recomputes the GELU before each).
      bias = (jnp.zeros((n,), jnp.float32) if layer.bias is None
              else layer.bias[...].reshape(n))
      y_MxN = onednn.quantized_matmul(x_MxK, packed[...], q_KxN.scale, bias)
      return y_MxN.reshape(*lead, *out_shape)
    x_MxK = qwix.quantize(x_MxK.astype(jnp.float32), jnp.int8, channelwise_axes=(0,))
    if x_MxK.zero_point is None and q_KxN.zero_point is None and onednn.int8_enabled():
      # Kernels not packed (quantized with oneDNN off, or several devices): qwix.dot_general's
      # arithmetic (int32 product, times the row scales, times the column scales), the int8
      # product on oneDNN's VNNI kernels on CPU: the same values.
      y_MxN = onednn.int8_matmul(x_MxK.qvalue, q_KxN.qvalue).astype(jnp.float32)
      return _finish(layer, y_MxN * x_MxK.scale * q_KxN.scale, lead, out_shape)
  else:  # Dequantized to the compute dtype; f32 accumulation as layers.matmul.
    x_MxK, q_KxN = x_MxK.astype(layer.dtype), q_KxN.astype(layer.dtype)
  y_MxN = qwix.dot_general(x_MxK, q_KxN, dims, preferred_element_type=jnp.float32)
  return _finish(layer, y_MxN.astype(jnp.float32), lead, out_shape)


def _finish(layer: layers.Dense, y_MxN: jax.Array, lead, out_shape) -> jax.Array:
  y = y_MxN.reshape(*lead, *out_shape)
  if layer.bias is not None:
    y = y + layer.bias[...].astype(jnp.float32)
  return y


def embed(table, ids: jax.Array) -> jax.Array:
  """Rows `ids` of an int8 table (one scale per row), dequantized to f32."""
  return _qwix().dequantize(table.astype(jnp.float32)[ids])


def attend(table, x: jax.Array, dtype) -> jax.Array:
  """x[..., D] against an int8 table [V, D] -> logits [..., V] (the tied MLM decoder)."""
  qwix = _qwix()
  x_MxD = x.reshape(-1, x.shape[-1]).astype(dtype)
  logits_MxV = qwix.dot_general(x_MxD, table.astype(dtype), (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
  return logits_MxV.astype(jnp.float32).reshape(*x.shape[:-1], table.shape[0])


def stored_state(model: nnx.Module) -> nnx.State:
  """The model's state without the oneDNN-packed copies of its kernels (a per-process cache):
  what a quantized model holds as its own values."""
  return nnx.state(model, nnx.Not(OnednnPacked))


def parameter_bytes(model: nnx.Module) -> int:
  """Bytes of the model's state (int8 values and their scales for a quantized model; the
  oneDNN-packed copies of its kernels not counted: stored_state)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(stored_state(model))))
