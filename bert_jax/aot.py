"""Compile the real sharded train step for a TPU pod topology on any machine (no TPU needed).

  bert-jax-aot --config=configs/pretrain.py:base --topology=v5e:16x16 \
      --config.mesh.data=16 --config.mesh.fsdp=16 --batch_per_chip=64 [--json]

With libtpu, JAX compiles for TPU devices it does not have (`jax.experimental.topologies`);
`tpu_compiler` finds libtpu in a cache folder outside the venv (installed there once, so other JAX
processes do not print TPU start-up errors) or, on a TPU VM, from the `[tpu]` extra. The mesh,
the abstract sharded train state and batch, and the jitted step come from the functions training
uses (`pretraining.model_task`, `train.abstract_train_state`, `train.jit_train_step`); only the
devices differ. Reported per chip: state and temporary memory against HBM, XLA's FLOPs beside
the analytical count, the collectives in the compiled program, and a lower bound on step time. A
configuration whose analytical memory estimate is clearly above HBM is refused before compiling
(compiling BERT-large for 256 chips takes minutes on a laptop). `analyze` is the library
function behind `bert-jax-aot` (bert_jax/cli/aot.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import time

# Compile-only use never touches a chip, so several processes may load libtpu at once (without
# this, a second process fails on /tmp/libtpu_lockfile).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bert_jax import device_dtype, family, optim, sharding, tpu_compiler, train  # noqa: E402
from bert_jax import flops as flops_lib  # noqa: E402
from bert_jax.errors import ConfigError  # noqa: E402
from bert_jax.tpu_compiler import CompilerMissingError  # noqa: E402, F401 (aot.CompilerMissingError)

TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")  # Keys of flops.CHIPS that topology names start with.
# v4 and v5p run as megacore (one JAX device per chip, both TensorCores); v5e/v6e have one core.
_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore"}
# An analytical estimate above HBM x this is refused before compiling; below, XLA decides.
REFUSE_FACTOR = 1.2
BATCH_KEYS = {  # The input pipeline's batch: key -> (shape kind, dtype).
    "input_ids": ("BxL", jnp.int32), "input_mask": ("BxL", jnp.int32),
    "segment_ids": ("BxL", jnp.int32), "masked_lm_positions": ("BxP", jnp.int32),
    "masked_lm_ids": ("BxP", jnp.int32), "masked_lm_weights": ("BxP", jnp.float32),
    "next_sentence_labels": ("B", jnp.int32),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class DoesNotFit(Exception):
  """The configuration needs more memory per chip than the chip has (message says what to do)."""


def chip_of(topology: str) -> str:
  """'v5e:16x16' -> 'v5e' (a key of flops.CHIPS)."""
  name = topology.split(":")[0].lower()
  if name not in TPU_CHIPS:
    raise ConfigError(f"Topology {topology!r} is not one of the known TPU generations "
                      f"{TPU_CHIPS}; write it like v5e:16x16 or v4:2x2x4.")
  return name


def topology_devices(topology: str) -> list:
  """Compile-only TPU devices for `topology` (needs libtpu, not a TPU)."""
  from jax.experimental import topologies
  chip = chip_of(topology)
  tpu_compiler.make_importable(topology)
  kwargs = {"chip_config_name": _CHIP_CONFIG[chip]} if chip in _CHIP_CONFIG else {}
  try:
    return list(topologies.get_topology_desc(topology, "tpu", **kwargs).devices)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise CompilerMissingError(f"The TPU compiler (libtpu) could not be loaded; install it with "
                                 f"`{tpu_compiler.install_command()}` and run again.") from None
    raise ConfigError(f"TPU topology {topology!r} was refused: {str(e).splitlines()[0]}; use a "
                      f"name like v5e:2x2, v4:2x2x4 or v5p:4x4x4.") from None


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The input pipeline's batch as abstract arrays, sharded as `train.to_global` shards it."""
  b, l, p = config.train.batch_size, config.data.seq_len, config.data.max_predictions
  dims = {"BxL": (b, l), "BxP": (b, p), "B": (b,)}
  return {k: jax.ShapeDtypeStruct(dims[kind], dtype,
                                  sharding=sharding.batch_sharding(mesh, len(dims[kind])))
          for k, (kind, dtype) in BATCH_KEYS.items()}


def per_chip_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_tree))


def activation_bytes_per_sequence(bert_config, config, tensor: int) -> float:
  """Analytical activation memory of one sequence in one chip's micro-batch (bytes).

  Counts what the backward pass keeps per layer plus the MLM logits, fitted to XLA:TPU's
  temp_size for BERT-base at seq 128 (docs/scaling.md compares it on every row). It only has to
  refuse the hopeless before a long compile; XLA's memory analysis is the figure reported.
  """
  d, f, n = bert_config.hidden_size, bert_config.intermediate_size, bert_config.num_attention_heads
  l, p, v = config.data.seq_len, config.data.max_predictions, bert_config.vocab_size
  c = jnp.dtype(bert_config.dtype).itemsize  # Matmul inputs are saved in the compute dtype.
  # One byte per mask entry (ModernBERT's field is attention_dropout).
  rate = getattr(bert_config, "attention_probs_dropout_prob",
                 getattr(bert_config, "attention_dropout", 0.0))
  drop = 1 if rate > 0 else 0
  per_token = ((c + 8) * d  # f32 residual stream / LayerNorm inputs, input copy, dropout masks
               + 3 * c * d / tensor  # q, k, v (heads split over tensor)
               + (2 + c) * f / tensor  # feed-forward pre- and post-activation
               + (c + drop) * n * l / tensor)  # attention probabilities (and dropout mask)
  layers = bert_config.num_hidden_layers
  if bert_config.remat:  # Keeps each layer's input, recomputes one layer at a time.
    per_seq = l * (layers * 4 * d + per_token)
  else:
    per_seq = l * layers * per_token
  return per_seq + 3 * 4 * p * v / tensor  # logits, log-softmax, their gradient (f32)


@dataclasses.dataclass
class Setup:
  """Everything compiled and measured for one (config, topology)."""
  config: object
  topology: str
  chip: str
  mesh: object
  bert_config: object
  task: train.Task
  abstract: train.TrainState
  shardings: train.TrainState
  batch: dict
  estimate: dict
  # Parameter dimensions a mesh axis of the rules does not divide (replicated instead).
  indivisible: list = dataclasses.field(default_factory=list)


def prepare(config, topology: str, vocab_size: int = 30522, batch_per_chip: int = 0) -> Setup:
  """Mesh, abstract state and batch, and the analytical memory estimate (nothing compiled)."""
  from flax import nnx

  from bert_jax import pretraining
  chip = chip_of(topology)
  devices = topology_devices(topology)
  mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
  with _config_rules(config):
    # "auto" would choose for this compiling host's CPU; the target is a TPU.
    config.model.dtype = device_dtype.resolve(config.model.dtype, platform="tpu")
    if batch_per_chip:
      config.train.batch_size = batch_per_chip * sharding.batch_axis_size(mesh)
    train.validate_batch(config, mesh)
    task = pretraining.model_task(config, vocab_size)
    bert_config = family.model_config_from(config.model, vocab_size)  # BERT or ModernBERT
    tx, _ = optim.create_optimizer(config.optimizer, config.train.num_steps)
    _, abstract, shardings = train.abstract_train_state(task, tx, mesh, seed=config.train.seed)
    abstract_vars = nnx.split(nnx.eval_shape(lambda: task.model_factory(nnx.Rngs(0))))[1]
    indivisible = [sharding.describe_indivisible(row)
                   for row in sharding.indivisible(abstract_vars, mesh)]
    batch_axes = sharding.batch_axis_size(mesh)
  params = per_chip_bytes(abstract.params)
  opt = per_chip_bytes(abstract.opt_state)
  micro = config.train.batch_size // (config.optimizer.grad_accum_steps * batch_axes)
  acts = micro * activation_bytes_per_sequence(bert_config, config, mesh.shape["tensor"])
  # Gradients are one more f32 copy of the parameters (two with accumulation: sum and current).
  grads = params * (2 if config.optimizer.grad_accum_steps > 1 else 1)
  estimate = {"params": params, "optimizer": opt, "gradients": grads, "activations": acts,
              "total": params + opt + grads + acts}
  with _config_rules(config):
    batch = abstract_batch(config, mesh)
  return Setup(config, topology, chip, mesh, bert_config, task, abstract, shardings, batch,
               estimate, indivisible)


def _config_rules(config):
  """The config's mesh.rules, installed as `train.run` installs them for training."""
  return sharding.use_rules(sharding.rules_of(config.mesh))


def check_estimate(setup: Setup) -> None:
  """Refuses a configuration whose estimate is clearly above HBM, before compiling."""
  hbm = flops_lib.CHIPS[setup.chip]["hbm_bytes"]
  if setup.estimate["total"] > REFUSE_FACTOR * hbm:
    raise DoesNotFit(advice(setup, setup.estimate["total"], "estimated before compiling"))


def advice(setup: Setup, needed: float, how: str) -> str:
  """One sentence: what did not fit and what to change."""
  est, cfg, mesh = setup.estimate, setup.config, setup.mesh
  hbm = flops_lib.CHIPS[setup.chip]["hbm_bytes"]
  state = est["params"] + est["optimizer"] + est["gradients"]
  per_chip = cfg.train.batch_size // sharding.batch_axis_size(mesh)
  per_seq = est["activations"] / max(per_chip // cfg.optimizer.grad_accum_steps, 1)
  room = 0.85 * hbm - state
  fits = int(room // per_seq) if room > 0 else 0
  if state > 0.5 * hbm:
    fix = (f"shard the parameters and optimizer state over more chips (raise mesh.fsdp, now "
           f"{mesh.shape['fsdp']}, and lower mesh.data to match)")
  elif not setup.bert_config.remat and fits < per_chip:
    fix = (f"lower the per-chip batch from {per_chip} to at most ~{max(fits, 1)} "
           f"(train.batch_size, or optimizer.grad_accum_steps), or set model.remat=True")
  else:
    fix = (f"lower the per-chip micro-batch from {per_chip // cfg.optimizer.grad_accum_steps} "
           f"to at most ~{max(fits, 1)} (train.batch_size or optimizer.grad_accum_steps)")
  return (f"{setup.topology} does not fit: {_gib(needed)} GiB per chip ({how}) but a "
          f"{setup.chip} chip has {_gib(hbm)} GiB of HBM; {fix}.")


def compile_step(setup: Setup):
  """Lowers and compiles the train step exactly as `train.run` jits it; returns the executable."""
  tx, schedule = optim.create_optimizer(setup.config.optimizer, setup.config.train.num_steps)
  graphdef, _, _ = train.abstract_train_state(setup.task, tx, setup.mesh,
                                              seed=setup.config.train.seed)
  step = train.jit_train_step(setup.task, setup.config, graphdef, tx, schedule, setup.shardings)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype,
                             sharding=jax.sharding.NamedSharding(setup.mesh,
                                                                 jax.sharding.PartitionSpec()))
  with jax.set_mesh(setup.mesh), _config_rules(setup.config):
    return step.lower(setup.abstract, setup.batch, rng).compile()


_COLLECTIVE_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
# XLA:TPU emits a reduce-scatter as a fusion calling an `all-reduce-scatter` computation (an
# all-reduce and a dynamic-slice inside): it is counted once, as a reduce-scatter, at the fusion.
_FUSED_REDUCE_SCATTER = re.compile(r"=\s*(.*?)\sfusion\(.*calls=%?all-reduce-scatter")


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """Counts (and result bytes) of each collective in compiled HLO text (async starts once)."""
  out = {c: {"count": 0, "bytes": 0} for c in COLLECTIVES}
  computation = ""
  for line in hlo_text.splitlines():
    if line[:1] not in ("", " ", "\t") and line.rstrip().endswith("{"):  # A computation starts.
      computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      continue
    if computation.startswith("all-reduce-scatter"):
      continue  # The body of a fused reduce-scatter, counted at its fusion.
    fused = _FUSED_REDUCE_SCATTER.search(line)
    m = None if fused else _COLLECTIVE_OP.search(line)
    if fused:
      kind, type_text, is_start = "reduce-scatter", fused.group(1), False
    elif m:
      kind, type_text, is_start = m.group(2), m.group(1), m.group(3) is not None
    else:
      continue
    out[kind]["count"] += 1
    out[kind]["bytes"] += _shape_bytes(type_text, is_start)
  return out


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def _shape_bytes(type_text: str, is_start: bool) -> int:
  shapes = re.findall(r"\b(pred|[sufb]f?\d+)\[([\d,]*)\]", type_text)
  sizes = [_DTYPE_BYTES.get(t, 4) * math.prod(int(x) for x in dims.split(",") if x)
           for t, dims in shapes]
  if is_start and len(sizes) >= 2:  # Async start results are (operands, results[, scratch]).
    sizes = sizes[len(sizes) // 2:]
  return int(sum(sizes))


def analyze(config, topology: str, *, vocab_size: int = 30522, batch_per_chip: int = 0,
            mfu: float = 0.4, force: bool = False) -> dict:
  """Compiles the train step for `topology` and returns the per-chip report (a JSON-able dict).

  Raises DoesNotFit (before compiling unless `force`) when the configuration cannot fit.
  """
  t0 = time.time()
  setup = prepare(config, topology, vocab_size, batch_per_chip)
  if not force:
    check_estimate(setup)
  t1 = time.time()
  try:
    compiled = compile_step(setup)
  except RuntimeError as e:  # XLA:TPU refuses programs that exceed HBM with RESOURCE_EXHAUSTED.
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      raise DoesNotFit(advice(setup, float("nan"), "XLA ran out of HBM while compiling")) from None
    raise
  compile_s = time.time() - t1
  report = report_of(setup, compiled, mfu)
  report["seconds"] = {"prepare": round(t1 - t0, 1), "compile": round(compile_s, 1)}
  return report


def report_of(setup: Setup, compiled, mfu: float) -> dict:
  cfg, mesh, chip = setup.config, setup.mesh, setup.chip
  spec = flops_lib.CHIPS[chip]
  n = mesh.size
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0))  # Per device: the partitioned program.
  analytic = setup.task.flops_per_example * cfg.train.batch_size / n
  step_s = analytic / spec["peak_flops"]  # Every model FLOP at the chip's peak.
  tokens = cfg.train.batch_size * cfg.data.seq_len / n
  per_chip_batch = cfg.train.batch_size // sharding.batch_axis_size(mesh)
  est = setup.estimate
  report = {
      "topology": setup.topology, "chip": chip, "chips": n,
      "device_kind": mesh.devices.flat[0].device_kind,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "model": {"preset": cfg.model.preset, "layers": setup.bert_config.num_hidden_layers,
                "hidden": setup.bert_config.hidden_size, "remat": setup.bert_config.remat,
                "dtype": setup.bert_config.dtype,
                "params": train.param_count(setup.abstract.params)},
      "seq_len": cfg.data.seq_len, "max_predictions": cfg.data.max_predictions,
      "global_batch": cfg.train.batch_size, "per_chip_batch": per_chip_batch,
      "grad_accum_steps": cfg.optimizer.grad_accum_steps,
      "memory": {
          "params_bytes": est["params"], "optimizer_bytes": est["optimizer"],
          "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
          "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
          "code_bytes": mem.generated_code_size_in_bytes, "total_bytes": total,
          "hbm_bytes": spec["hbm_bytes"], "fraction_of_hbm": total / spec["hbm_bytes"],
          "estimate_total_bytes": est["total"], "estimate_activation_bytes": est["activations"],
      },
      "flops": {"xla_per_chip": xla_flops, "analytic_per_chip": analytic,
                "xla_over_analytic": xla_flops / analytic if analytic else float("nan")},
      "collectives": collectives(compiled.as_text()),
      "xla_bytes_accessed_per_chip": float(cost.get("bytes accessed", 0.0)),
      "step_time_lower_bound_s": step_s,
      "tokens_per_s_per_chip": {"peak": tokens / step_s, "mfu": mfu,
                                "at_mfu": mfu * tokens / step_s},
      "param_shardings_as_requested": shardings_match(compiled, setup),
      "indivisible_dims": setup.indivisible,
  }
  report["fits"] = total <= spec["hbm_bytes"]
  if not report["fits"]:
    report["advice"] = advice(setup, total, "XLA's memory analysis")
  return report


def shardings_match(compiled, setup: Setup) -> bool:
  """Whether the compiled program takes the parameters with the shardings sharding.py asked for."""
  (state_in, _, _), _ = compiled.input_shardings
  got, want = jax.tree.leaves(state_in.params), jax.tree.leaves(setup.shardings.params)
  shapes = jax.tree.leaves(setup.abstract.params)
  return len(got) == len(want) and all(
      g.is_equivalent_to(w, len(s.shape)) for g, w, s in zip(got, want, shapes, strict=True))


def _gib(x: float) -> str:
  return "?" if x != x else f"{x / 2**30:.2f}" if x < 2**30 else f"{x / 2**30:.1f}"


def format_report(r: dict) -> str:
  m, f, c, tps = r["memory"], r["flops"], r["collectives"], r["tokens_per_s_per_chip"]
  sharded = "as requested" if r["param_shardings_as_requested"] else "CHANGED by XLA"
  mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [
      f"{r['topology']}: {r['chips']} x {r['device_kind']}, mesh {mesh}",
      f"model {r['model']['preset']} ({r['model']['params'] / 1e6:.0f}M params, "
      f"{r['model']['dtype']}, remat={r['model']['remat']}), seq {r['seq_len']}, "
      f"global batch {r['global_batch']} ({r['per_chip_batch']} per chip, "
      f"{r['grad_accum_steps']} micro-batches)",
      "per chip:",
      f"  params + optimizer   {_gib(m['params_bytes'])} + {_gib(m['optimizer_bytes'])} GiB",
      f"  activations / temp   {_gib(m['temp_bytes'])} GiB "
      f"(analytical estimate {_gib(m['estimate_activation_bytes'])} GiB)",
      f"  total                {_gib(m['total_bytes'])} of {_gib(m['hbm_bytes'])} GiB HBM "
      f"({100 * m['fraction_of_hbm']:.0f}%)",
      f"  FLOPs per step       XLA {f['xla_per_chip']:.3e}, analytical "
      f"{f['analytic_per_chip']:.3e} (ratio {f['xla_over_analytic']:.3f})",
      "  collectives          " + ", ".join(
          f"{k} {v['count']} ({v['bytes'] / 2**20:.0f} MiB)" for k, v in c.items() if v["count"])
      + ("" if any(v["count"] for v in c.values()) else "none"),
      f"  step time >=         {1e3 * r['step_time_lower_bound_s']:.2f} ms (analytical FLOPs at "
      f"{flops_lib.CHIPS[r['chip']]['peak_flops'] / 1e12:.0f} TFLOP/s peak)",
      f"  tokens/s per chip    <= {tps['peak']:,.0f} at peak, {tps['at_mfu']:,.0f} at "
      f"{100 * tps['mfu']:.0f}% MFU",
      f"  parameter shardings  {sharded}",
  ]
  lines += [f"  not sharded          {row}" for row in r.get("indivisible_dims", [])]
  if "seconds" in r:
    lines.append(f"compiled in {r['seconds']['compile']} s")
  if not r["fits"]:
    lines.append(r["advice"])
  return "\n".join(lines)
