"""Matmuls on CPU through oneDNN, as an XLA FFI custom call (bert_jax/kernels/onednn_matmul.cc).

XLA:CPU runs an int8 x int8 -> int32 dot through generic loops, slower than its bf16 kernels,
while the CPUs that serve BERT have int8 dot-product instructions (avx512_vnni, AMX, avx_vnni)
that oneDNN uses. Measured on a 2-core AMD EPYC (family 25, avx512_vnni + avx512_bf16), GOP/s,
XLA bf16 / XLA int8 / oneDNN int8 (s8 x s8 -> s32): 4096x384 @ 384x1536 377 / 273 / 566;
4096x768 @ 768x768 349 / 272 / 821; 4096x3072 @ 3072x768 392 / 315 / 851.

On one CPU device, attention's batched products ([B, N, L, H] x [B, N, M, H], small per batch
entry) and the Dense layers' products also go to oneDNN (`batched_matmul`, gradients included;
layers.on_onednn), in f32 and, on CPUs with native bf16, in bf16:
- f32: on a Xeon (AVX-512 + VNNI, no avx512_bf16, where `dtype="auto"` is f32) BERT-base's
  attention products at [32, 12, 128, 64] took 3.0 / 2.6 ms against XLA:CPU's 6.8 / 8.2, and
  its Dense products 1.1-2.2x XLA's at 32 and 128 rows; the f32 training step ran 5-10% faster,
  batch-32 f32 classification 1.21x (RESULTS.md runs W and X).
- bf16: oneDNN reads the backward's transposed operands through strides, where XLA:CPU's fast
  bf16 dot needs them copied (layers._mm_nt), and its avx512_bf16 kernels ran BERT-base's Dense
  products forward + backward 5-7% faster than XLA's on a 2-core AMD EPYC family 26: the bf16
  training step 1.14x at 8 x 128 and 1.13x at 2 x 512 (RESULTS.md run AD). On family 25 a
  single bf16 product had run at XLA's speed, within 10%.

For training on AVX-512, `attention_core` runs attention's products, softmax and dropout as
one custom VJP: its softmax and dropout are one pass over the scores each way
(kernels/softmax_dropout.cc, layers.dropout's mask to the bit) where XLA:CPU made five.

`int8_matmul(a, b)` is the int32 product of two int8 matrices: through oneDNN on CPU when the
kernel is usable and the CPU has int8 dot-product instructions (VNNI or AMX), XLA's dot
elsewhere (`jax.lax.platform_dependent`, so a TPU or GPU lowering never sees the custom call),
with the same integers either way. bert_jax.quantization's int8 activations use it, with each
kernel packed once into oneDNN's blocked layout (`pack_int8`): its kernels otherwise copy the
plain weights into that layout on every call (3-40% of a product, most at few rows; batch-1
BERT-base classification p50 52.0 vs 59.3 ms, 8 interleaved rounds, benchmarks/RESULTS.md).

Threads: the kernel splits its work over XLA's own intra-op thread pool (the FFI ThreadPool
context) and the calling thread, oneDNN single-threaded on each, rather than letting oneDNN's
OpenMP team run beside XLA's pool: the two fought for the cores, and every XLA op between two
custom calls cost ~100 us more (batch-1 BERT-base int8 classification 51 -> 38 ms, RESULTS.md
run X). Batched products split over the batch from one entry per thread on; a single product
(or a batch smaller than the pool) runs on oneDNN's own threads. A call of at most 64 output
rows (a batch-1 encode) gives its helper piece to one thread of the library's own, which spins
(yielding its core) for `set_spin_micros` microseconds after each piece, 200 unless
$BERT_JAX_ONEDNN_SPIN_US says otherwise (0: never spin; say, many processes sharing few cores).
For inference, `panel_matmul` multiplies by a weight matrix kept as one dense column panel per
thread (`column_panels`), which oneDNN's gemm reads faster at few rows than a run of a plain
matrix's columns (inference.inference_split keeps Dense kernels so; RESULTS.md run AB).

The kernel is compiled once, on first use, into $XDG_CACHE_HOME/bert_jax/kernels (a few seconds),
keyed by the source, jaxlib and oneDNN. It needs a C++17 compiler (`g++`, or $CXX) and oneDNN
with its headers: `pip install bert-jax[onednn]` (Intel's onednn-cpu-gomp and
onednn-devel-cpu-gomp wheels, Apache-2.0), or a system oneDNN (Debian: libdnnl-dev) or one
under $BERT_JAX_ONEDNN_ROOT. The environment variable BERT_JAX_ONEDNN chooses:

  auto   oneDNN when it can be built and loaded, else XLA (the reason: `unavailable_reason()`)
  on     oneDNN, or stop with the reason it cannot be used
  off    XLA only
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import compile_cache, device_dtype
from bert_jax.errors import ConfigError

ENV = "BERT_JAX_ONEDNN"
CHOICES = ("auto", "on", "off")
ROOT_ENV = "BERT_JAX_ONEDNN_ROOT"
SPIN_ENV = "BERT_JAX_ONEDNN_SPIN_US"
TARGET = "bert_jax_onednn_matmul"
PACK_TARGET = "bert_jax_onednn_pack"
PACKED_TARGET = "bert_jax_onednn_matmul_packed"
QUANTIZED_TARGET = "bert_jax_onednn_quantized_matmul"
ADAMW_TARGET = "bert_jax_adamw"
ATTENTION_TARGET = "bert_jax_attention"
PANEL_TARGET = "bert_jax_onednn_panel_matmul"
SOFTMAX_TARGET = "bert_jax_softmax_dropout"
SOFTMAX_GRAD_TARGET = "bert_jax_softmax_dropout_grad"
_KERNELS = os.path.join(os.path.dirname(__file__), "kernels")
SOURCE = os.path.join(_KERNELS, "onednn_matmul.cc")
# Built into the same library: the fused AdamW step (bert_jax.fused_adamw), attention's core for
# inference (`attention`), its softmax and dropout for training (`attention_core`) and the
# thread-pool helpers the kernels share.
OTHER_SOURCES = (os.path.join(_KERNELS, "adamw.cc"), os.path.join(_KERNELS, "attention.cc"),
                 os.path.join(_KERNELS, "softmax_dropout.cc"))
HEADERS = (os.path.join(_KERNELS, "pool.h"), os.path.join(_KERNELS, "exp.h"))
# OpenMP to keep oneDNN single-threaded on each of XLA's pool threads the kernel splits work
# over; no FMA contraction, so the quantized product's quantize and rescale repeat XLA's f32
# roundings (an FMA only where it writes one); sqrt without errno, so AdamW's loop vectorizes.
CXXFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w", "-fopenmp", "-ffp-contract=off",
            "-fno-math-errno")


def choice(environ=os.environ) -> str:
  value = environ.get(ENV, "auto").strip() or "auto"
  if value not in CHOICES:
    raise ConfigError(f"{ENV}={value!r} is not one of {', '.join(CHOICES)}.")
  return value


def _roots(environ=os.environ, roots_only: bool = False) -> list[str]:
  roots = [environ.get(ROOT_ENV, "")]
  if not roots_only:  # $BERT_JAX_ONEDNN_ROOT, then the environment's prefix (pip), the system's
    roots += [sys.prefix, "/usr", "/usr/local"]
  return [r for r in dict.fromkeys(roots) if r]


def find_onednn(environ=os.environ, roots_only: bool = False) -> tuple[str, str]:
  """(include dir, library dir) of the first oneDNN with headers and a libdnnl; raises
  FileNotFoundError saying what to install. `roots_only`: look under $BERT_JAX_ONEDNN_ROOT only."""
  roots = _roots(environ, roots_only)
  for root in roots:
    include = os.path.join(root, "include")
    if not os.path.isfile(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
      continue
    for lib in (os.path.join(root, "lib"), os.path.join(root, "lib64"),
                os.path.join(root, "lib", "x86_64-linux-gnu")):
      if glob.glob(os.path.join(lib, "libdnnl.so*")):
        return include, lib
  raise FileNotFoundError(
      "no oneDNN with headers found under " + ", ".join(roots) +
      "; install it with `pip install bert-jax[onednn]` (or set " + ROOT_ENV + ")")


def _compiler(environ=os.environ) -> str:
  search = environ.get("PATH")
  path = shutil.which(environ.get("CXX") or "g++", path=search) or shutil.which("c++", path=search)
  if not path:
    raise FileNotFoundError("no C++ compiler (g++, or $CXX) to build the oneDNN kernel; "
                            "install one (Debian: apt-get install g++)")
  return path


def build(environ=os.environ) -> str:
  """The path of the compiled kernel library, building it if this combination is not cached."""
  include, lib = find_onednn(environ)
  cxx = _compiler(environ)
  sources = (SOURCE, *OTHER_SOURCES)
  source = b""
  for path in (*sources, *HEADERS):
    with open(path, "rb") as f:
      source += f.read()
  libdnnl = sorted(glob.glob(os.path.join(lib, "libdnnl.so*")))[-1]
  key = hashlib.sha256(b"|".join([source, jax.__version__.encode(), jax.ffi.include_dir().encode(),
                                  os.path.realpath(libdnnl).encode(), cxx.encode(),
                                  " ".join(CXXFLAGS).encode()]))
  folder = os.path.join(compile_cache.cache_root(environ), "kernels")
  out = os.path.join(folder, f"onednn_matmul-{key.hexdigest()[:16]}.so")
  if os.path.isfile(out):
    return out
  os.makedirs(folder, exist_ok=True)
  with open(out + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine; the others wait and reuse it
    if os.path.isfile(out):
      return out
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    cmd = [cxx, *CXXFLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include}", *sources, f"-L{lib}",
           "-ldnnl", f"-Wl,-rpath,{lib}", "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      os.unlink(tmp)
      raise RuntimeError(f"building the oneDNN kernel failed ({' '.join(cmd)}): "
                         + proc.stderr.strip()[-2000:])
    os.replace(tmp, out)
  return out


_LOAD_LOCK = threading.Lock()


def _load() -> str:
  """Builds, loads and registers the kernel once per process; '' or why it is unusable."""
  with _LOAD_LOCK:  # threads tracing at once must not register the target twice
    return _load_once()


_LIBRARY: list = []  # the loaded kernel library, once _load succeeded


def _open_library():
  """The kernel library, built if need be, or why it cannot be (a str). Without oneDNN or a
  compiler (build's FileNotFoundError) that is expected and the products quietly stay on XLA;
  anything else (the build fails, the built library does not load) is a bug with both present,
  so it is logged too (a broken kernel would otherwise only show as speed)."""
  try:
    return ctypes.CDLL(build())
  except FileNotFoundError as e:
    return str(e)
  except (OSError, RuntimeError) as e:
    logging.warning("The oneDNN kernels did not build; every product runs on XLA: %s", e)
    return str(e)


@functools.cache
def _load_once() -> str:
  spin = os.environ.get(SPIN_ENV, "").strip()
  spin = _spin_micros(spin) if spin else None  # a bad value stops here, before loading
  library = _open_library()
  if isinstance(library, str):
    return library
  for target, symbol in ((TARGET, library.BertJaxOnednnMatmul),
                         (PACK_TARGET, library.BertJaxOnednnPack),
                         (PACKED_TARGET, library.BertJaxOnednnMatmulPacked),
                         (QUANTIZED_TARGET, library.BertJaxOnednnQuantizedMatmul),
                         (ADAMW_TARGET, library.BertJaxAdamW),
                         (ATTENTION_TARGET, library.BertJaxAttention),
                         (PANEL_TARGET, library.BertJaxOnednnPanelMatmul),
                         (SOFTMAX_TARGET, library.BertJaxSoftmaxDropout),
                         (SOFTMAX_GRAD_TARGET, library.BertJaxSoftmaxDropoutGrad)):
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
  library.BertJaxSetSpinMicros.argtypes = [ctypes.c_int]
  library.BertJaxOnednnPackedBytes.argtypes = [ctypes.c_int64, ctypes.c_int64]
  library.BertJaxOnednnPackedBytes.restype = ctypes.c_int64
  _LIBRARY.append(library)
  if spin is not None:
    library.BertJaxSetSpinMicros(spin)
  return ""


def _spin_micros(value) -> int:
  try:
    micros = int(value)
  except ValueError:
    micros = -1
  if not 0 <= micros <= 1_000_000:
    raise ConfigError(f"spin time {value!r} (${SPIN_ENV} or set_spin_micros) is not a whole "
                      "number of microseconds in [0, 1000000]; use 0 to never spin, or unset "
                      "it for the default 200.")
  return micros


def set_spin_micros(micros: int) -> None:
  """How long the kernels' helper thread for small calls spins after each piece (module doc)."""
  micros = _spin_micros(micros)
  _require_kernel()
  _LIBRARY[0].BertJaxSetSpinMicros(micros)


# Where oneDNN's int8 products are exact: with VNNI / AMX the u8 x s8 pairs accumulate in 32
# bits; without (AVX2 only) oneDNN sums pairs in saturating 16 bits, so a s8 x s8 product could
# differ from XLA's integers there, and nothing was measured on such a CPU.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def _this_cpu_flags() -> frozenset[str]:
  return device_dtype.cpu_flags()


def int8_reason(flags=None) -> str:
  """'' when int8 products go to oneDNN here, else why not."""
  flags = _this_cpu_flags() if flags is None else flags
  if not any(f in flags for f in INT8_DOT_FLAGS):
    return ("this CPU has no int8 dot-product instructions (" + ", ".join(INT8_DOT_FLAGS) +
            ")")
  return _load()


def _enabled(environ, reason_fn, products: str) -> bool:
  """BERT_JAX_ONEDNN's answer for one kind of product: off, or whether `reason_fn()` is ''
  (on: a ConfigError with the reason when it is not)."""
  mode = choice(environ)
  if mode == "off":
    return False
  reason = reason_fn()
  if reason and mode == "on":
    raise ConfigError(f"{ENV}=on but oneDNN cannot compute the {products} products: {reason}.")
  return not reason


def int8_enabled(environ=os.environ) -> bool:
  """Whether int8_matmul runs on oneDNN (BERT_JAX_ONEDNN, a usable kernel, a VNNI/AMX CPU)."""
  return _enabled(environ, int8_reason, "int8")


def f32_enabled(environ=os.environ) -> bool:
  """Whether f32 batched products (attention's, batched_matmul) run on oneDNN here:
  BERT_JAX_ONEDNN, a usable kernel, and one device (a custom call has no sharding rule)."""
  return _enabled(environ, unavailable_reason, "f32") and jax.device_count() == 1


def bf16_enabled(environ=os.environ, flags=None) -> bool:
  """Whether bf16 Dense and attention products (batched_matmul) run on oneDNN here:
  BERT_JAX_ONEDNN, a usable kernel, a CPU with native bf16 and one device. Without native bf16
  they stay on XLA even with BERT_JAX_ONEDNN=on (bf16 is emulated either way; "auto" picks f32
  on such a CPU)."""
  if not device_dtype.native_bf16(_this_cpu_flags() if flags is None else flags):
    return False
  return _enabled(environ, unavailable_reason, "bf16") and jax.device_count() == 1


def unavailable_reason() -> str:
  """'' when the kernel is usable here, else why not (what to install)."""
  return _load()


def _require_kernel() -> None:
  """Builds and registers the kernel on first use; a ConfigError saying why it cannot be."""
  reason = _load()
  if reason:
    raise ConfigError(f"the oneDNN kernel cannot be used: {reason}.")


def matmul(a: jax.Array, b: jax.Array, out_dtype, *, transpose_a: bool = False,
           transpose_b: bool = False) -> jax.Array:
  """op(a) @ op(b) -> [..., M, N] of out_dtype through the oneDNN custom call (CPU only; a
  ConfigError when the kernel is unusable here); leading dims are batch dims, equal in a and b;
  op transposes the last two. Types: f32/bf16 -> f32, or s8/u8 x s8 -> s32."""
  _require_kernel()  # registers the targets on first use
  m = a.shape[-1] if transpose_a else a.shape[-2]
  n = b.shape[-2] if transpose_b else b.shape[-1]
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((*a.shape[:-2], m, n), out_dtype),
                          vmap_method="broadcast_all")  # a vmapped axis is one more batch dim
  return call(a, b, transpose_a=transpose_a, transpose_b=transpose_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def batched_matmul(a: jax.Array, b: jax.Array, transpose_b: bool = False,
                   dtype=jnp.float32) -> jax.Array:
  """a [..., M, K] @ b [..., K, N] (b [..., N, K] with `transpose_b`) on oneDNN with `dtype`
  (f32 or bf16) inputs and f32 results, forward and backward (the gradients are oneDNN products
  too, transposes read through strides, no transposed copies); the gradients come back in the
  primal dtypes. The Dense and attention products on one CPU device (layers.on_onednn)."""
  return _bmm_fwd(a, b, transpose_b, dtype)[0]


def _bmm_fwd(a, b, transpose_b, dtype):
  a_c, b_c = a.astype(dtype), b.astype(dtype)
  # Zero-size markers carry the primal dtypes so that the gradients come back in them.
  return (matmul(a_c, b_c, jnp.float32, transpose_b=transpose_b),
          (a_c, b_c, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype)))


def _bmm_bwd(transpose_b, dtype, res, g):
  a, b, a_marker, b_marker = res
  g = g.astype(dtype)
  if transpose_b:  # y = a b^T: da = g b, db = g^T a.
    da, db = matmul(g, b, jnp.float32), matmul(g, a, jnp.float32, transpose_a=True)
  else:  # y = a b: da = g b^T, db = a^T g.
    da, db = (matmul(g, b, jnp.float32, transpose_b=True),
              matmul(a, g, jnp.float32, transpose_a=True))
  return da.astype(a_marker.dtype), db.astype(b_marker.dtype)


batched_matmul.defvjp(_bmm_fwd, _bmm_bwd)


def core_usable() -> bool:
  """Whether `attention_core`'s softmax and dropout kernels run on this CPU (AVX-512); the
  caller checks that its products run on oneDNN (layers.on_onednn)."""
  return "avx512f" in _this_cpu_flags()


def _dropout_constants(rate: float) -> tuple[int, np.float32]:
  """layers.dropout's threshold on the hash and its scale of what is kept (0: no dropout)."""
  if rate <= 0.0:
    return 0, np.float32(1.0)
  from bert_jax import layers  # imported here: layers imports this module
  return layers.drop_threshold(rate), np.float32(1.0 / (1.0 - rate))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def attention_core(q_BxNxLxH: jax.Array, k_BxNxMxH: jax.Array, v_BxNxMxH: jax.Array,
                   bias_Bx1xLxM: jax.Array, key_words: jax.Array, dtype, rate: float
                   ) -> jax.Array:
  """softmax(q k^T + bias) with layers.dropout's mask (the words of its key, `rate`), times v:
  the context [B, N, L, H] in f32, gradients included, for training (q already scaled). The
  products are oneDNN's (`dtype` inputs, f32 sums); the softmax and dropout one pass over the
  scores each way (kernels/softmax_dropout.cc: the row's max and sum kept, y recomputed in the
  backward), with the dropped probabilities and the scores' gradient in `dtype`. The bias
  [B or 1, 1, L or 1, M] (a mask's 0 / -1e9) gets no gradient; q, k and v get theirs in their
  own dtypes."""
  return _core_fwd(q_BxNxLxH, k_BxNxMxH, v_BxNxMxH, bias_Bx1xLxM, key_words, dtype, rate)[0]


def _core_fwd(q, k, v, bias, key_words, dtype, rate):
  _require_kernel()
  q_c, k_c, v_c = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  bias, key_words = bias.astype(jnp.float32), key_words.astype(jnp.uint32)  # kept so for bwd
  s_BxNxLxM = matmul(q_c, k_c, jnp.float32, transpose_b=True)
  drop_below, keep_scale = _dropout_constants(rate)
  b, n, l, _ = s_BxNxLxM.shape
  call = jax.ffi.ffi_call(SOFTMAX_TARGET, (jax.ShapeDtypeStruct(s_BxNxLxM.shape, dtype),
                                           jax.ShapeDtypeStruct((b, n, l, 2), jnp.float32)))
  p_BxNxLxM, stats = call(s_BxNxLxM, bias, key_words, drop_below=np.int64(drop_below),
                          keep_scale=keep_scale)
  ctx = matmul(p_BxNxLxM, v_c, jnp.float32)
  markers = tuple(jnp.zeros((0,), x.dtype) for x in (q, k, v))
  return ctx, (q_c, k_c, v_c, s_BxNxLxM, bias, stats, p_BxNxLxM, key_words, markers)


def _core_bwd(dtype, rate, res, g):
  q_c, k_c, v_c, s_BxNxLxM, bias, stats, p_BxNxLxM, key_words, markers = res
  g_c = g.astype(dtype)
  dp_BxNxLxM = matmul(g_c, v_c, jnp.float32, transpose_b=True)
  dv = matmul(p_BxNxLxM, g_c, jnp.float32, transpose_a=True)
  drop_below, keep_scale = _dropout_constants(rate)
  call = jax.ffi.ffi_call(SOFTMAX_GRAD_TARGET, jax.ShapeDtypeStruct(s_BxNxLxM.shape, dtype))
  ds_BxNxLxM = call(s_BxNxLxM, bias, stats, dp_BxNxLxM, key_words,
                    drop_below=np.int64(drop_below), keep_scale=keep_scale)
  dq = matmul(ds_BxNxLxM, k_c, jnp.float32)
  dk = matmul(ds_BxNxLxM, q_c, jnp.float32, transpose_a=True)
  return (dq.astype(markers[0].dtype), dk.astype(markers[1].dtype), dv.astype(markers[2].dtype),
          None, None)


attention_core.defvjp(_core_fwd, _core_bwd)


def attention_usable(head_size: int) -> bool:
  """Whether `attention` runs here: f32 products on oneDNN (f32_enabled: the kernel library
  built and loaded, one device), AVX-512 and a head size that is a multiple of 16 (the kernel's
  register width)."""
  return f32_enabled() and "avx512f" in _this_cpu_flags() and head_size % 16 == 0


def attention(q_BxLxNxH: jax.Array, k_BxMxNxH: jax.Array, v_BxMxNxH: jax.Array,
              bias_Bx1xRxM: jax.Array, scale: float) -> jax.Array:
  """softmax(scale * q k^T + bias) v -> f32 [B, L, N, H] in one custom call, forward only, for
  inference (kernels/attention.cc; where `attention_usable`): q, v and the context are read and
  written through their strides, k as one transpose [B, N, H, M], the additive bias [B, 1, 1 or
  L, M] broadcast over the heads (and the queries). It has no gradient."""
  _require_kernel()
  f32 = jnp.float32
  call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct(q_BxLxNxH.shape, f32))
  kt_BxNxHxM = jnp.transpose(k_BxMxNxH.astype(f32), (0, 2, 3, 1))
  return call(q_BxLxNxH.astype(f32), kt_BxNxHxM, v_BxMxNxH.astype(f32),
              bias_Bx1xRxM.astype(f32), scale=np.float32(scale))


def panel_count() -> int:
  """Column panels of a Dense kernel for `panel_matmul`: one per CPU this process may use
  (XLA's intra-op pool has as many threads)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def column_panels(w_KxN: jax.Array, panels: int, dtype=jnp.float32) -> jax.Array:
  """[K, N] weights as `panels` dense column panels [P, K, N / P] of `dtype` (f32 or bf16) for
  `panel_matmul`."""
  k, n = w_KxN.shape
  return jnp.transpose(w_KxN.astype(dtype).reshape(k, panels, n // panels), (1, 0, 2))


def panel_matmul(a_MxK: jax.Array, w_PxKxn: jax.Array, rows: jax.Array | None = None
                 ) -> jax.Array:
  """a [M, K] @ the [K, P n] matrix whose column panels are w [P, K, n] -> f32 [M, P n], a in
  w's dtype (f32 or bf16), one panel a thread, forward only (kernels/onednn_matmul.cc
  PanelMatmul: dense panels run oneDNN's gemm faster at few rows than runs of a plain matrix's
  columns). With `rows` (an int32 scalar, clamped to [0, M]) only a's first `rows` rows are
  multiplied; the rest of the result is zeros."""
  _require_kernel()
  p, _, n = w_PxKxn.shape
  call = jax.ffi.ffi_call(PANEL_TARGET, jax.ShapeDtypeStruct((a_MxK.shape[0], p * n),
                                                             jnp.float32))
  rows = jnp.zeros((0,), jnp.int32) if rows is None else jnp.asarray(rows, jnp.int32).reshape(1)
  return call(a_MxK.astype(w_PxKxn.dtype), w_PxKxn, rows)


def int8_on_onednn() -> bool:
  """Whether int8_matmul runs on oneDNN here: int8_enabled(), JAX on the CPU and one device (a
  custom call has no sharding rule). Only then are int8 weights worth packing."""
  return jax.default_backend() == "cpu" and int8_enabled() and jax.device_count() == 1


def pack_int8(b_KxN: jax.Array) -> jax.Array:
  """int8 [K, N] weights in oneDNN's blocked layout for int8_matmul(..., packed=) and
  quantized_matmul: uint8 bytes, made once (oneDNN's kernels otherwise copy the plain weights
  into that layout on every call): the layout for u8 activations (s8 + 128, VNNI's operand
  types), then 128 x each column's sum to take the 128 back out. The layout belongs to this
  CPU: keep it in memory, never in a checkpoint."""
  _require_kernel()
  k, n = b_KxN.shape
  size = _LIBRARY[0].BertJaxOnednnPackedBytes(k, n)
  if size < 0:
    raise ConfigError(f"oneDNN has no int8 matmul for {k} x {n} weights here.")
  call = jax.ffi.ffi_call(PACK_TARGET, jax.ShapeDtypeStruct((size,), jnp.uint8))
  return call(jnp.asarray(b_KxN, jnp.int8))


def int8_matmul(a_MxK: jax.Array, b_KxN: jax.Array, packed: jax.Array | None = None) -> jax.Array:
  """int8 [M, K] @ int8 [K, N] -> the exact int32 [M, N]: oneDNN on CPU when int8_enabled(),
  reading `packed` (pack_int8(b_KxN)) instead of b when given."""
  def xla(a, b, *_):
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)

  if not int8_on_onednn():
    return xla(a_MxK, b_KxN)
  if packed is None:
    return jax.lax.platform_dependent(
        a_MxK, b_KxN, cpu=lambda a, b: matmul(a, b, jnp.int32), default=xla)
  n = b_KxN.shape[1]
  on_cpu = jax.ffi.ffi_call(PACKED_TARGET,
                            jax.ShapeDtypeStruct((a_MxK.shape[0], n), jnp.int32))
  return jax.lax.platform_dependent(
      a_MxK, b_KxN, packed, cpu=lambda a, b, p: on_cpu(a, p), default=xla)


def quantized_matmul(x_MxK: jax.Array, packed: jax.Array, col_scale_N: jax.Array,
                     bias_N: jax.Array) -> jax.Array:
  """f32 [M, K] activations against packed int8 weights (pack_int8) -> f32 [M, N]: per row the
  int8 values and scale of `qwix.quantize(x, int8, channelwise_axes=(0,))`, their int32 product
  with the weights, times the row scale, times `col_scale_N`, plus `bias_N`: XLA's values for
  those steps, in one oneDNN custom call that reads each row once (CPU; int8_on_onednn()).
  Measured in the model: batch-32 BERT-base classification 1.15x faster than XLA's separate
  passes (Xeon, AVX-512 + VNNI; benchmarks/RESULTS.md run W), the same logits bit for bit."""
  _require_kernel()
  n = col_scale_N.shape[-1]
  call = jax.ffi.ffi_call(QUANTIZED_TARGET,
                          jax.ShapeDtypeStruct((x_MxK.shape[0], n), jnp.float32))
  return call(x_MxK.astype(jnp.float32), packed, col_scale_N.astype(jnp.float32).reshape(n),
              bias_N.astype(jnp.float32).reshape(n))
