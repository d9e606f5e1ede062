"""Shared by the fault-injection tests: the run every fault is compared with, restoring a
checkpoint in this process, and file snapshots (a fault must never change or lose a file)."""
from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
from train_helpers import REPO, committed_steps  # noqa: F401 (the fault tests import it here)

# 40 steps, an async checkpoint every 5 steps (all kept), an evaluation every 10.
FAULT_RUN = ("--config.train.num_steps=40", "--config.checkpoint.every_steps=5",
             "--config.checkpoint.async_save=True", "--config.checkpoint.max_to_keep=100",
             "--config.train.eval_every=10", "--config.data.eval_batches=8",
             "--config.train.log_every=1")
NUM_STEPS = 40


def tiny_config(data_dir, vocab, num_steps=NUM_STEPS):
  """The tiny config with FAULT_RUN's overrides applied, for the same run in this process."""
  from bert_jax.configs import pretrain as pretrain_configs
  c = pretrain_configs.get_config("tiny")
  c.data.update(dir=str(data_dir), vocab=str(vocab))
  for override in FAULT_RUN:
    key, value = override[len("--config."):].split("=", 1)
    section, name = key.split(".")
    old = c[section][name]
    c[section][name] = value == "True" if isinstance(old, bool) else type(old)(value)
  c.train.num_steps = num_steps
  return c


def run_in_process(workdir, data_dir, vocab, num_steps=NUM_STEPS) -> dict:
  """The FAULT_RUN pretraining in this process (one device, as the CLI runs get): where no
  kill, device count or second process is needed, the same run without a new interpreter."""
  from bert_jax import pretraining
  return pretraining.train_and_evaluate(tiny_config(data_dir, vocab, num_steps), str(workdir))


def restore(workdir, step, data_dir, vocab):
  """(state, data_state, meta) of checkpoint `step`, through the trainer's own Checkpointer."""
  from bert_jax import checkpoint as ckpt_lib
  from bert_jax import optim, pretraining, sharding, train
  from bert_jax.tokenization import Tokenizer
  c = tiny_config(data_dir, vocab)
  task = pretraining.model_task(c, Tokenizer.from_vocab(str(vocab)).vocab_size)
  tx, _ = optim.create_optimizer(c.optimizer, c.train.num_steps)
  _, abstract, _ = train.abstract_train_state(task, tx, sharding.make_mesh(dict(c.mesh)))
  cp = ckpt_lib.Checkpointer(str(workdir), max_to_keep=100)
  try:
    return cp.restore(step, abstract)
  finally:
    cp.close()


def equal_trees(a, b) -> bool:
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)))


def snapshot(*roots) -> dict[str, tuple[int, int, str]]:
  """{path: (size, mtime_ns, sha256)} of every file under roots (files or folders)."""
  out = {}
  for root in roots:
    root = pathlib.Path(root)
    # os.walk, not rglob: a folder the run renames mid-walk is skipped, not an error.
    paths = [root] if root.is_file() else sorted(
        pathlib.Path(d, f) for d, _, files in os.walk(root) for f in files)
    for p in paths:
      try:  # A live run's async save renames its temp folders while we walk them.
        st = p.stat()
        out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
      except FileNotFoundError:
        continue  # gone since the listing: a change if another snapshot has it
  return out


def unchanged(before: dict, after: dict) -> list[str]:
  """Files of `before` that are gone or differ in `after` (new files are allowed)."""
  return [p for p, v in before.items() if after.get(p) != v]


def stderr_tail(proc) -> str:
  return proc.stderr[-3000:] if isinstance(proc.stderr, str) else ""


os.environ.setdefault("JAX_PLATFORMS", "cpu")
