"""Compile a ModernBERT MLM train step for a TPU topology on this CPU machine (AOT, libtpu).

The real `train.make_train_step` (AdamW, jitted with the state and batch shardings of
`sharding.py`, state donated) around ModernBertForMaskedLM and a masked-LM loss, on packed rows
(segment ids, restarted positions), with `attention_impl` (default: Splash). Used by
tests/test_attention.py and for the ModernBERT rows of docs/scaling.md:

  python tests/aot_modern_step.py --preset=modern_base --topology=v5e:2x2 --seq_len=8192 \
      --batch_per_chip=1

Prints one JSON line: memory per chip (XLA's memory_analysis), XLA and analytic FLOPs per chip,
whether the program holds the Splash kernel, compile seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def analytic_train_flops(config, batch: int, seq_len: int, masked: int) -> float:
  """3 x forward matmul FLOPs; local layers score only the keys their window can see."""
  d, f, v, n_layers = (config.hidden_size, config.intermediate_size, config.vocab_size,
                       config.num_hidden_layers)
  total = 0.0
  for i in range(n_layers):
    keys = seq_len if config.is_global(i) else min(seq_len, 2 * config.sliding_window + 1)
    total += (2 * seq_len * d * 3 * d + 2 * seq_len * keys * d * 2 + 2 * seq_len * d * d
              + 2 * seq_len * d * 2 * f + 2 * seq_len * f * d)
  total += 2 * masked * d * d + 2 * masked * d * v
  return 3.0 * batch * total


def compile_step(preset: str, topology: str, seq_len: int, batch_per_chip: int, masked: int,
                 impl: str = "splash", fsdp: int = 1) -> dict:
  # Several compile-only processes may hold libtpu at once (as bert_jax.aot allows).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from bert_jax import tpu_compiler
  tpu_compiler.make_importable(topology)
  import jax
  import jax.numpy as jnp
  import optax
  from jax.experimental import topologies
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from bert_jax import modern_modeling, sharding, train
  from bert_jax.modern_configuration import PRESETS

  topo = topologies.get_topology_desc(topology, "tpu")
  mesh = sharding.make_mesh({"data": -1, "fsdp": fsdp, "tensor": 1}, topo.devices)
  config = PRESETS[preset].replace(attention_impl=impl, dtype="bfloat16",
                                   max_position_embeddings=max(seq_len, 8192))
  batch = batch_per_chip * mesh.size

  def loss_fn(model, b, rng):
    logits_BxPxV = model(b["input_ids"], b["input_mask"], None, b["position_ids"],
                         masked_positions=b["masked_lm_positions"],
                         packed_segment_ids=b["packed_segment_ids"], dropout_rng=rng)
    logp = jax.nn.log_softmax(logits_BxPxV, axis=-1)
    nll = -jnp.take_along_axis(logp, b["masked_lm_ids"][..., None], axis=-1)[..., 0]
    w = b["masked_lm_weights"]
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0), {"mlm_loss": (jnp.sum(nll * w),
                                                                         jnp.sum(w))}

  task = train.Task(name="modern_mlm", loss_fn=loss_fn, train_iter=lambda: iter(()),
                    model_factory=lambda rngs: modern_modeling.ModernBertForMaskedLM(
                        config, rngs=rngs))
  tx = optax.adamw(1e-4, weight_decay=1e-5)
  graphdef, abstract, shardings = train.abstract_train_state(task, tx, mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))
  with jax.set_mesh(mesh):
    step = jax.jit(train.make_train_step(graphdef, loss_fn, tx, lambda s: 1e-4,
                                         grad_shardings=shardings.params),
                   in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                   donate_argnums=0)
    row = NamedSharding(mesh, sharding.logical_to_spec(("batch", None)))
    shapes = {"input_ids": (seq_len, jnp.int32), "input_mask": (seq_len, jnp.int32),
              "position_ids": (seq_len, jnp.int32), "packed_segment_ids": (seq_len, jnp.int32),
              "masked_lm_positions": (masked, jnp.int32), "masked_lm_ids": (masked, jnp.int32),
              "masked_lm_weights": (masked, jnp.float32)}
    abstract_batch = {k: jax.ShapeDtypeStruct((batch, n), t, sharding=row)
                      for k, (n, t) in shapes.items()}
    t0 = time.time()
    lowered = step.lower(abstract, abstract_batch, key)
    compiled = lowered.compile()
    seconds = time.time() - t0
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = compiled.as_text()
  return {
      "preset": preset, "topology": topology, "chips": mesh.size, "seq_len": seq_len,
      "per_chip_batch": batch_per_chip, "masked_positions": masked, "attention_impl": impl,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "device_kind": mesh.devices.flat[0].device_kind,
      "splash_kernel_in_hlo": "splash" in hlo.lower(),
      "memory_per_chip_bytes": total, "temp_bytes": mem.temp_size_in_bytes,
      "argument_bytes": mem.argument_size_in_bytes,
      "xla_flops_per_chip": float(cost.get("flops", 0.0)),
      "analytic_flops_per_chip": analytic_train_flops(config, batch, seq_len, masked) / mesh.size,
      "compile_s": round(seconds, 1),
  }


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="modern_base")
  p.add_argument("--topology", default="v5e:2x2")
  p.add_argument("--seq_len", type=int, default=1024)
  p.add_argument("--batch_per_chip", type=int, default=1)
  p.add_argument("--masked", type=int, default=0, help="masked positions (default 30%%)")
  p.add_argument("--impl", default="splash")
  p.add_argument("--fsdp", type=int, default=1)
  a = p.parse_args()
  masked = a.masked or int(0.3 * a.seq_len)
  print(json.dumps(compile_step(a.preset, a.topology, a.seq_len, a.batch_per_chip, masked,
                                a.impl, a.fsdp)))


if __name__ == "__main__":
  main()
