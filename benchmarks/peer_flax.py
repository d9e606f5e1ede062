"""Hugging Face Flax peer: one `FlaxBertForPreTraining` training step, timed (run in .venv-bench).

Usage: .venv-bench/bin/python benchmarks/peer_flax.py --preset base --batch_size 8 ...
Prints one JSON line with the step times. Built from a config, nothing downloaded. The step is
the one of transformers' `run_mlm_flax.py` example plus NSP: logits at every position, loss over
the labelled ones, global-norm clipping, optax AdamW with BERT's decay mask, jitted with the
state donated. `--dtype bfloat16` is transformers' own bf16 switch (`dtype=jnp.bfloat16`:
computation in bf16, parameters and optimizer in f32).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common  # noqa: E402
import synthetic  # noqa: E402


def main() -> None:
  args = peer_common.parse_args(argparse.ArgumentParser(description=__doc__))
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import transformers

  config = transformers.BertConfig(**peer_common.hf_config_kwargs(args))
  model = transformers.FlaxBertForPreTraining(config, seed=args.seed,
                                              dtype=jnp.dtype(args.dtype))
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, args.learning_rate, args.warmup_steps),
       optax.linear_schedule(args.learning_rate, 0.0, 1_000_000)], [args.warmup_steps])

  def decay_mask(params):
    flat = {k: not (k[-1] == "bias" or any("LayerNorm" in str(n) for n in k))
            for k in _flatten(params)}
    return _unflatten(flat)

  tx = optax.chain(optax.clip_by_global_norm(args.clip_norm),
                   optax.adamw(schedule, b1=args.b1, b2=args.b2, eps=args.eps,
                               weight_decay=args.weight_decay, mask=decay_mask))
  params = model.params
  state = (params, tx.init(params))

  host = synthetic.pretraining_batch(args.batch_size, args.seq_len, args.max_predictions,
                                     args.vocab_size, seed=args.seed)
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  batch["labels"] = jnp.asarray(synthetic.hf_labels(host).astype(np.int32))

  def loss_fn(params, batch, dropout_rng):
    out = model(batch["input_ids"], batch["input_mask"], batch["segment_ids"], params=params,
                dropout_rng=dropout_rng, train=True)
    labels_BxL = batch["labels"]
    w_BxL = (labels_BxL != -100).astype(jnp.float32)
    mlm = optax.softmax_cross_entropy_with_integer_labels(
        out.prediction_logits.astype(jnp.float32), jnp.maximum(labels_BxL, 0))
    nsp = optax.softmax_cross_entropy_with_integer_labels(
        out.seq_relationship_logits.astype(jnp.float32), batch["next_sentence_labels"])
    return jnp.sum(mlm * w_BxL) / jnp.maximum(jnp.sum(w_BxL), 1.0) + jnp.mean(nsp)

  def train_step(state, batch, rng):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  step = jax.jit(train_step, donate_argnums=0)
  rng = jax.random.key(args.seed)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  times, losses = [], []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    state, loss = compiled(state, batch, jax.random.fold_in(rng, i))
    jax.block_until_ready((state, loss))
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
    losses.append(float(loss))
  out = synthetic.stats(times)
  out.update(name="hf_flax", variant="jit " + ("bf16 compute (dtype=bfloat16)"
                                                if args.dtype == "bfloat16" else "f32"),
             version=f"transformers {transformers.__version__}, jax "
             f"{jax.__version__}", compile_s=compile_s, first_loss=losses[0],
             last_loss=losses[-1], params=sum(x.size for x in jax.tree.leaves(state[0])))
  print(json.dumps(out))


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,)


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


if __name__ == "__main__":
  main()
