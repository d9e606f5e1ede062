"""Jitted inference on shape buckets, shared by `fill_mask`, `embed` and the task predictors.

Every call pads its batch to a (batch, length) bucket: `fill_mask` pads lengths to the next power
of two from 16, `embed` to the next of `LENGTH_BUCKETS` (multiples of 8 at most 1.5x apart, so less
padding); both up to `max_position_embeddings`, batches to the next power of two up to the
batch size. A jitted function is therefore compiled once per bucket, and a second call whose
texts fall in a bucket already seen reuses the compiled code. `TRACES` counts traces per function
(tests read it).

`inference_split` is `nnx.split` with every Dense kernel already in its layer's compute dtype
(bf16 under dtype "auto" on this kind of CPU): the matmuls cast their inputs to that dtype anyway,
so the numbers are the same, but the f32 -> bf16 convert of every weight happens once per model
instead of inside every call (about a third of BERT-base's time at batch 1). Where f32 products
run on oneDNN, its attention layers also run their core (scores, mask, softmax, context) as one
forward-only custom call (`attention.INFERENCE_IMPL`).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import variablelib

from bert_jax import layers, onednn

MIN_BUCKET = 16
# Sequence lengths `embed`, predict and bucketed fine-tuning (tasks/buckets.py) pad to: powers
# of two from MIN_BUCKET and the lengths half-way between them (x1.5).
LENGTH_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                  4096, 6144, 8192)
TRACES: collections.Counter = collections.Counter()
_CAST_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bucket(n: int, cap: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum), but at most `cap` (n itself if n > cap)."""
  b = max(minimum, 1)
  while b < n:
    b *= 2
  return max(min(b, cap), n)


def length_bucket(n: int, cap: int) -> int:
  """The smallest of LENGTH_BUCKETS >= n, but at most `cap` (n itself if n > cap)."""
  b = next((b for b in LENGTH_BUCKETS if b >= n), n)
  return max(min(b, cap), n)


class StaticGraph:
  """A GraphDef and its state's tree structure as a jit static argument, hashed once: a GraphDef
  hashes its whole tree on every call (at batch 1 that cost as much as MiniLM's forward). Equal
  when the graphdefs and structures are. The state goes beside it as a flat list of arrays
  (`split`), which jit flattens in C++: an nnx.State's Variables flatten through Python, and
  passing one cost ~0.3 ms more per call than its 103 arrays (MiniLM, 0.51 vs 0.21 ms to
  dispatch `encode`; benchmarks/RESULTS.md run AB)."""
  __slots__ = ("graphdef", "treedef", "_hash")

  def __init__(self, graphdef: nnx.GraphDef, treedef):
    self.graphdef, self.treedef = graphdef, treedef
    self._hash = hash((graphdef, treedef))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return (isinstance(other, StaticGraph)
            and (other.graphdef is self.graphdef or other.graphdef == self.graphdef)
            and (other.treedef is self.treedef or other.treedef == self.treedef))

  def state(self, leaves: list) -> nnx.State:
    return jax.tree.unflatten(self.treedef, leaves)

  def merge(self, leaves: list) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state(leaves))


def split(model: nnx.Module) -> tuple[StaticGraph, list]:
  """`nnx.split` as (StaticGraph, the state's arrays in a flat list)."""
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  return StaticGraph(graphdef, treedef), leaves


def inference_split(model: nnx.Module) -> tuple[StaticGraph, list]:
  """`split(model)` with each Dense kernel cast to its layer's compute dtype (`static.merge(
  leaves)` rebuilds the model, in its inference form where `_inference_form`
  applies: not differentiable there).

  Cached per model: a later call whose Variables still hold the same arrays (checked by
  identity on their raw values, no graph traversal: at batch 1 nnx.split itself cost as much as
  MiniLM's forward, and `Variable.get_value` 0.56-0.9 ms over its 103 Variables, a tenth of a
  batch-1 `embed`) returns the cached pair; a model updated in place (training, nnx.update,
  loading) gets a fresh split and cast. A model holding array refs (whose contents change in
  place) is never cached. As with nnx.cached_partial, the module structure is assumed fixed: a
  model whose Variables are replaced by new Variable objects needs `_CAST_STATES.pop(model)`.
  """
  hit = _CAST_STATES.get(model)
  if hit is not None:
    graphdef, variables, values, leaves = hit
    if all(v.get_raw_value() is x for v, x in zip(variables, values, strict=True)):
      return graphdef, leaves
  graphdef, state = nnx.split(_inference_form(model))
  casts = {(*path, "kernel"): jnp.dtype(mod.dtype) for path, mod in nnx.iter_modules(model)
           if isinstance(mod, layers.Dense) and isinstance(mod.kernel, nnx.Param)
           and jnp.dtype(mod.dtype) != mod.kernel.dtype}

  def cast(path, x):
    key = tuple(getattr(k, "key", None) for k in path[:-1])  # the last key is Param's `value`
    dtype = casts.get(key)
    return x if dtype is None else x.astype(dtype)

  if casts:
    state = jax.tree_util.tree_map_with_path(cast, state)
  variables = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
  leaves, treedef = jax.tree.flatten(state)
  graphdef = StaticGraph(graphdef, treedef)
  values = [v.get_raw_value() for v in variables]
  if not any(variablelib.is_array_ref(x) for x in values):
    _CAST_STATES[model] = (graphdef, variables, values, leaves)
  return graphdef, leaves


def _inference_form(model: nnx.Module) -> nnx.Module:
  """`model`, or a clone (sharing its other arrays) in the form inference on oneDNN runs
  faster in (layers.on_onednn: f32, and bf16 on a CPU with native bf16; forward only):
  - attention layers that would run XLA's attention take attention.INFERENCE_IMPL: the core of
    a call in one custom call where attention.py's gates let it (MiniLM embeddings at batch 32
    1.07-1.26x faster, batch 1 with the kernels' spinning helper 1.09x; benchmarks/RESULTS.md
    runs AA, AB);
  - Dense layers get their kernel [K, N] (flattened) also as onednn.column_panels, one dense
    panel per thread in the layer's dtype, where N splits into whole 16-column blocks, for
    their products of few rows (layers.ColumnPanels; batch-1 MiniLM f32 1.05-1.33x, run AB;
    bf16 1.24x, run AD). A copy: the split holds the Dense weights twice.
  """
  from bert_jax import attention

  def fused(mod):
    return (getattr(mod, "impl", None) in ("xla", "auto") and hasattr(mod, "dtype")
            and layers.on_onednn(mod.dtype))

  panels = onednn.panel_count()

  def paneled(mod):
    if not (isinstance(mod, layers.Dense) and type(mod.kernel) is nnx.Param and panels > 1
            and getattr(mod, "panels", None) is None and layers.on_onednn(mod.dtype)):
      return False
    n = math.prod(mod.kernel.shape[mod.n_in:])
    return n % (16 * panels) == 0

  if not any(fused(mod) or paneled(mod) for _, mod in nnx.iter_modules(model)):
    return model
  clone = nnx.clone(model)
  for _, mod in nnx.iter_modules(clone):
    if fused(mod):
      mod.impl = attention.INFERENCE_IMPL
    if paneled(mod):
      k = math.prod(mod.kernel.shape[:mod.n_in])
      mod.panels = layers.ColumnPanels(onednn.column_panels(mod.kernel[...].reshape(k, -1),
                                                            panels, mod.dtype))
  return clone


def encoder_of(model: nnx.Module) -> nnx.Module:
  """The encoder inside a head model (BERT's `bert`, ModernBERT's `model`), or the model itself."""
  for name in ("bert", "model"):
    inner = getattr(model, name, None)
    if isinstance(inner, nnx.Module):
      return inner
  return model


def pad_rows(rows: list[list[int]], types: list[list[int]] | None, length: int, batch: int,
             pad_id: int) -> dict[str, np.ndarray]:
  """int32 [batch, length] input_ids / token_type_ids / attention_mask; extra rows are padding."""
  input_ids = np.full((batch, length), pad_id, np.int32)
  token_type_ids = np.zeros((batch, length), np.int32)
  attention_mask = np.zeros((batch, length), np.int32)
  for k, row in enumerate(rows):
    input_ids[k, :len(row)] = row
    attention_mask[k, :len(row)] = 1
    if types is not None:
      token_type_ids[k, :len(row)] = types[k]
  attention_mask[len(rows):, 0] = 1  # Padding rows attend to one token: no all-masked softmax.
  return {"input_ids": input_ids, "token_type_ids": token_type_ids,
          "attention_mask": attention_mask}


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def mlm_top_k(graphdef, state, input_ids, attention_mask, token_type_ids, positions_BxP,
              *, top_k: int):
  """Probabilities of the top_k tokens at `positions_BxP`: (probs [B, P, k], ids [B, P, k])."""
  TRACES["mlm_top_k"] += 1
  model = graphdef.merge(state)
  out = model(input_ids, attention_mask, token_type_ids, masked_positions=positions_BxP)
  logits_BxPxV = getattr(out, "mlm_logits", out)
  probs_BxPxV = jax.nn.softmax(logits_BxPxV.astype(jnp.float32), axis=-1)
  return jax.lax.top_k(probs_BxPxV, top_k)


@contextlib.contextmanager
def skipping_padding(attention_mask_BxL: jax.Array):
  """For a batch of one right-padded sequence, the rows after its last real token are padding:
  the Dense layers' panel products traced within skip them (layers.valid_rows), writing zeros
  there. Batch-1 MiniLM embeddings 1.05x faster over the benchmark's sentences, bit for bit
  the same vectors (benchmarks/RESULTS.md run AC). A larger batch is left as it is."""
  if attention_mask_BxL.shape[0] != 1:
    yield
    return
  positions_L = jnp.arange(1, attention_mask_BxL.shape[1] + 1, dtype=jnp.int32)
  with layers.valid_rows(jnp.max(jnp.where(attention_mask_BxL[0] != 0, positions_L, 0))):
    yield


@functools.partial(jax.jit, static_argnames=("graphdef", "pooling"))
def encode(graphdef: StaticGraph, state: list, input_ids, attention_mask, token_type_ids, *,
           pooling: str):
  """Pooled [B, D] embeddings ("mean" over the attention mask, "cls", "pooler") or tokens.

  At batch 1 the Dense layers' panel products skip the length bucket's padding
  (`skipping_padding`; the token outputs there are meaningless)."""
  TRACES["encode"] += 1
  with skipping_padding(attention_mask):
    out = graphdef.merge(state)(input_ids, attention_mask, token_type_ids)
  x_BxLxD = out.last_hidden_state.astype(jnp.float32)
  if pooling == "tokens":
    return x_BxLxD
  if pooling == "pooler":
    return out.pooler_output.astype(jnp.float32)
  return pool_tokens(x_BxLxD, attention_mask, pooling)


def pool_tokens(x_BxLxD: jax.Array, attention_mask_BxL: jax.Array, pooling: str) -> jax.Array:
  """sentence-transformers' Pooling module: [B, D] f32 from the last layer's [B, L, D].

  "mean": sum over real tokens / max(count, 1e-9); "cls": the first token; "lasttoken": the
  last real token (right padding, as its pooling_mode_lasttoken).
  """
  x_BxLxD = x_BxLxD.astype(jnp.float32)
  if pooling == "cls":
    return x_BxLxD[:, 0]
  mask_BxL = attention_mask_BxL.astype(jnp.float32)
  if pooling == "lasttoken":
    last_B = jnp.maximum(jnp.sum(mask_BxL, axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x_BxLxD, last_B[:, None, None], axis=1)[:, 0]
  if pooling != "mean":
    raise ValueError(f"pooling={pooling!r} is not one of mean, cls, lasttoken.")
  mask_BxLx1 = mask_BxL[:, :, None]
  return (x_BxLxD * mask_BxLx1).sum(1) / jnp.maximum(mask_BxLx1.sum(1), 1e-9)
