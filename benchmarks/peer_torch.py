"""PyTorch peer: one `BertForPreTraining` training step, timed (run in .venv-bench).

Usage: .venv-bench/bin/python benchmarks/peer_torch.py --preset base --batch_size 8 ...
Prints one JSON line with the step times. Built from a config, nothing downloaded. The step is
what a PyTorch user writes: forward with MLM `labels` ([B, L], -100 where unmasked) and
`next_sentence_label`, backward, global-norm clipping, AdamW with BERT's decay mask.

Variants (what someone choosing PyTorch for speed would turn on): `--dtype bfloat16` runs the
forward under `torch.autocast("cpu", dtype=torch.bfloat16)` (f32 weights and optimizer, as
bert_jax's bf16); `--compile` wraps the model in `torch.compile` (Inductor, default mode; the
backward is compiled through AOTAutograd); `--optimizer fused` is the fused CPU AdamW kernel,
`default` is what `torch.optim.AdamW(...)` picks with no flag (the for-loop implementation on CPU).
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
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--compile", action="store_true", help="torch.compile the model")
  parser.add_argument("--optimizer", default="fused", choices=("fused", "default"))
  args = peer_common.parse_args(parser)
  import torch
  import transformers

  torch.manual_seed(args.seed)
  if args.threads:
    torch.set_num_threads(args.threads)
  config = transformers.BertConfig(**peer_common.hf_config_kwargs(args))
  model = transformers.BertForPreTraining(config).train()
  forward = torch.compile(model) if args.compile else model
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
  groups = [{"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
  kw = dict(lr=args.learning_rate, betas=(args.b1, args.b2), eps=args.eps)
  opt = None
  if args.optimizer == "fused":
    try:  # The fused CPU kernel is PyTorch's fastest AdamW; fall back where it is missing.
      opt = torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError):
      pass
  opt = opt or torch.optim.AdamW(groups, **kw)
  warmup = args.warmup_steps
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

  host = synthetic.pretraining_batch(args.batch_size, args.seq_len, args.max_predictions,
                                     args.vocab_size, seed=args.seed)
  inputs = dict(
      input_ids=torch.from_numpy(host["input_ids"].astype("int64")),
      attention_mask=torch.from_numpy(host["input_mask"].astype("int64")),
      token_type_ids=torch.from_numpy(host["segment_ids"].astype("int64")),
      labels=torch.from_numpy(synthetic.hf_labels(host)),
      next_sentence_label=torch.from_numpy(host["next_sentence_labels"].astype("int64")))
  autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16"
              else torch.autocast("cpu", enabled=False))

  def step():
    with autocast:
      loss = forward(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)

  times, losses = [], []
  t0 = time.perf_counter()
  losses.append(step())  # With --compile this step compiles the forward and the backward.
  first_step_s = time.perf_counter() - t0
  warm = max(args.warmup, 1)  # The first step is never timed.
  for i in range(1, warm + args.steps):
    t0 = time.perf_counter()
    losses.append(step())
    if i >= warm:
      times.append(time.perf_counter() - t0)
  out = synthetic.stats(times)
  fused = bool(opt.defaults.get("fused"))
  out.update(name="pytorch", version=f"torch {torch.__version__}", threads=torch.get_num_threads(),
             variant=("compile" if args.compile else "eager") + (
                 " autocast-bf16" if args.dtype == "bfloat16" else " f32") + (
                 " fused-AdamW" if fused else " AdamW"),
             compiled=args.compile, first_step_s=first_step_s,
             optimizer="AdamW(fused)" if fused else "AdamW",
             first_loss=losses[0], last_loss=losses[-1],
             params=sum(p.numel() for p in model.parameters()))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
