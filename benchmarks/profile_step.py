"""Where a bert_jax pretraining step spends its time: a jax.profiler trace, summed per XLA op.

  .venv/bin/python -m benchmarks.profile_step --preset=base --dtype=bfloat16 [--top=30]

Traces `--steps` steps after warm-up (no Python tracer), adds up each XLA op's time over the
executor threads (CPU time, so on 2 cores the total is up to 2x the wall time), and names each op
by the JAX operation it came from (HLO metadata) and a category (matmul, convert, rng, ...).
"""
from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bert_jax_step  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "base", "Model size (configuration.PRESETS).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Matmul input dtype.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_PRED = flags.DEFINE_integer("max_predictions", 20, "Masked positions per sequence.")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "Hidden and attention dropout.")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps.")
_TOP = flags.DEFINE_integer("top", 30, "Ops listed.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "Keep the trace here (default: a temp dir).")

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_metadata(hlo_text: str) -> dict[str, str]:
  """instruction name -> its JAX op_name, from the optimised HLO's metadata."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m and m.group(2):
      op = _OP_NAME.search(m.group(2))
      if op:
        out[m.group(1)] = op.group(1)
  return out


def category(op: str, jax_op: str) -> str:
  """A coarse bucket from the op's name (what XLA made of it) and its JAX operation."""
  last = jax_op.rsplit("/", 1)[-1]
  if "iota_reduce" in op:  # A variadic (value, index) reduce: argmax.
    return "argmax (accuracy)"
  if "convert" in op:
    return "convert f32<->bf16"
  if "copy" in op or "transpose" in op:
    return "copy/transpose"
  if any(n in jax_op for n in ("bernoulli", "threefry", "random_bits", "_uniform",
                               "shift_right_logical", "xor")):
    return "rng (dropout)"
  if last == "dot_general" or op.startswith("dot"):
    return "matmul"
  if "gather" in op or "scatter" in op:
    return "gather/scatter"
  if last.startswith(("reduce", "argmax")):
    return "reduce (softmax/LN/norms)"
  return "elementwise/other"


def summarize(trace_dir: str, hlo_text: str, steps: int, top: int) -> dict:
  meta = hlo_metadata(hlo_text)
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  profile = jax.profiler.ProfileData.from_file(sorted(files)[-1])
  per_op: collections.Counter = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
        continue
      for e in line.events:
        if not e.name.startswith("ThunkExecutor"):
          per_op[e.name] += e.duration_ns / 1e6 / steps
  total = sum(per_op.values())
  cats: collections.Counter = collections.Counter()
  for op, ms in per_op.items():
    cats[category(op, meta.get(op, ""))] += ms
  print(f"\nCPU ms per step summed over threads: {total:.0f}")
  print(f"{'category':28s} {'ms/step':>9s} {'share':>6s}")
  for cat, ms in cats.most_common():
    print(f"{cat:28s} {ms:9.1f} {ms / total:6.1%}")
  by_source: collections.Counter = collections.Counter()  # Non-matmul time by JAX source op.
  for op, ms in per_op.items():
    cat = category(op, meta.get(op, ""))
    if cat != "matmul":
      source = re.sub(r"layers?[_.]?\d+", "layer_N", meta.get(op, "?"))
      by_source[(cat, "/".join(source.split("/")[-3:]))] += ms
  print(f"\n{'not matmul: category':28s} {'ms/step':>9s} {'share':>6s}  jax op (any layer)")
  for (cat, source), ms in by_source.most_common(top):
    print(f"{cat[:28]:28s} {ms:9.1f} {ms / total:6.1%}  {source[-90:]}")
  print(f"\n{'op':28s} {'ms/step':>9s} {'share':>6s}  jax op")
  for op, ms in per_op.most_common(top):
    print(f"{op[:28]:28s} {ms:9.1f} {ms / total:6.1%}  {meta.get(op, '')[15:][-80:]}")
  return {"total_ms": total, "categories": dict(cats), "ops": dict(per_op.most_common(top))}


def main(argv):
  del argv
  config = bert_jax_step.bench_config(_PRESET.value, _BATCH.value, _SEQ.value, _PRED.value,
                                      _DTYPE.value, dropout=_DROPOUT.value)
  built = bert_jax_step.build(config)
  bert_jax_step.run_steps(built, 2)
  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="bert_jax_trace_")
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  options.host_tracer_level = 2
  jax.profiler.start_trace(trace_dir, profiler_options=options)
  times, _ = bert_jax_step.run_steps(built, _STEPS.value)
  jax.profiler.stop_trace()
  wall_ms = 1e3 * sorted(times)[len(times) // 2]
  print(f"{_PRESET.value} {_DTYPE.value}: wall ms per step {wall_ms:.0f}"
        f" (trace in {trace_dir})")
  summarize(trace_dir, built["compiled"].as_text(), _STEPS.value, _TOP.value)


if __name__ == "__main__":
  app.run(main)
