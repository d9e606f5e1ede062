"""One host of a two-process run reaches its first step 45 s after the other (a slow disk, a
loaded machine, a longer compile); each process has two devices, as in the launcher's test.
XLA:CPU's gloo collectives give a peer 30 s to join, which once aborted both processes in CI; the
trainer waits for every process at a coordination-service barrier after compiling each program,
so the run completes."""
from __future__ import annotations

import subprocess
import sys

from train_helpers import REPO, env_for, free_port, losses, pretrain_cmd

DELAY_S = 45  # Longer than gloo's fixed 30 s.

# Runs the pretraining CLI with the first batch of this process delayed by DELAY_S seconds.
_SLOW_FIRST_BATCH = f"""
import sys, time
from bert_jax.cli import pretrain
from bert_jax.data import shards
_next, _first = shards.ShardedIterator.__next__, [True]
def _slow_next(self):
  if _first[0]:
    _first[0] = False
    time.sleep({DELAY_S})
  return _next(self)
shards.ShardedIterator.__next__ = _slow_next
sys.argv = ["bert_jax.cli.pretrain"] + sys.argv[1:]
pretrain.run()
"""

STEPS = ("--config.train.num_steps=3", "--config.checkpoint.every_steps=2")


def test_a_host_late_by_more_than_gloos_timeout_does_not_abort_the_run(
    tmp_path, pretrain_dataset, vocab_path):
  port, procs = free_port(), []
  for pid in range(2):
    cmd = pretrain_cmd(tmp_path / "run", pretrain_dataset, vocab_path, *STEPS,
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={pid}")
    if pid == 1:
      cmd = [sys.executable, "-c", _SLOW_FIRST_BATCH, *cmd[3:]]
    procs.append(subprocess.Popen(cmd, env=env_for(2), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  done = [[line for line in out.splitlines() if line.startswith("completed at step 3")]
          for out, _ in outs]
  # Every process reports the same global evaluation (the unigram baseline's histogram is
  # summed over the global batch in the eval step, not taken from the batches of one process).
  assert done[0] and done[0] == done[1], done
  assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
