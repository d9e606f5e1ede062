"""`dtype="auto"`: the matmul input dtype that is fast on the device this process runs on.

bfloat16 on TPUs and GPUs, and on CPUs that compute bf16 natively (x86 `avx512_bf16` or
`amx_bf16` in /proc/cpuinfo); float32 everywhere else, where XLA:CPU would emulate bf16 matmuls
and run slower than in f32 (measured on a 2-core AVX2-only EPYC: a 2048^2 matmul with bf16
inputs 102 GFLOP/s vs 140 in f32; the demo step 2,200 vs 3,100 tokens/s). Accumulation and the
master weights stay f32 either way, so the choice changes speed and rounding, not the model.

Pretraining and fine-tuning resolve `model.dtype` here (family.compute_settings), inference
resolves its `dtype` argument (loading.load_pretrained), so a checkpoint written on one machine
never records "auto": it records what was chosen.
"""
from __future__ import annotations

import functools

import jax

AUTO = "auto"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of a native bf16 dot product
CPUINFO = "/proc/cpuinfo"


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags (the first `flags` / `Features` line of /proc/cpuinfo); empty
  where the file does not exist (macOS, Windows)."""
  try:
    with open(CPUINFO, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
  """Whether this CPU (or one with `flags`) has a native bf16 dot product."""
  flags = cpu_flags() if flags is None else flags
  return any(f in flags for f in NATIVE_BF16_FLAGS)


def choose(platform: str | None = None) -> str:
  """'bfloat16' or 'float32' for `platform` (default: JAX's default backend)."""
  platform = platform or jax.default_backend()
  if platform in ("tpu", "gpu", "cuda", "rocm"):
    return "bfloat16"
  return "bfloat16" if native_bf16() else "float32"


def resolve(dtype, platform: str | None = None):
  """`dtype` itself, or for "auto" the choice for this device; None stays None."""
  return choose(platform) if isinstance(dtype, str) and dtype == AUTO else dtype


def describe(platform: str | None = None) -> str:
  """One line for a start-up banner: the relevant CPU flags and the auto choice."""
  platform = platform or jax.default_backend()
  choice = choose(platform)
  if platform != "cpu":
    return f"Compute dtype auto -> {choice} ({platform})."
  relevant = [f for f in ("avx2", "avx512f", *NATIVE_BF16_FLAGS) if f in cpu_flags()]
  why = ("native bf16" if choice == "bfloat16" else
         "no avx512_bf16/amx_bf16: bf16 matmuls would be emulated")
  return (f"CPU flags: {' '.join(relevant) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}; "
          f"compute dtype auto -> {choice} ({why}).")


def target_backend() -> str:
  """The platform the computation being traced compiles for: the current mesh's devices (a TPU
  topology while `bert_jax.aot` compiles on a CPU machine), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  return getattr(device, "platform", None) or jax.default_backend()
