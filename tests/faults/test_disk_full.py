"""A write error during a save (RLIMIT_FSIZE makes the checkpoint's big file fail with EFBIG, as a
full disk fails with ENOSPC): the run stops with one clear line, the previous checkpoint stays
intact, the partial step is never restored, and rerunning resumes bitwise."""
from __future__ import annotations

import resource
import shutil
import subprocess

import pytest
from train_helpers import REPO, env_for, final_params, losses, pretrain_cmd

from faults.fault_helpers import (
  FAULT_RUN,
  committed_steps,
  equal_trees,
  run_in_process,
  snapshot,
  unchanged,
)


def _limit_file_size():
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB: the state is ~10 MiB.


@pytest.mark.faults
def test_write_error_during_save_keeps_previous_checkpoint(tmp_path, fault_reference,
                                                           pretrain_dataset, vocab_path):
  wd = tmp_path / "run"
  shutil.copytree(fault_reference, wd)
  for step in committed_steps(wd):  # The run as it was at step 20.
    if step > 20:
      shutil.rmtree(wd / "checkpoints" / str(step))
  shutil.rmtree(wd / "model")
  before = snapshot(wd / "checkpoints")
  proc = subprocess.run(pretrain_cmd(wd, pretrain_dataset, vocab_path, *FAULT_RUN),
                        env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300,
                        preexec_fn=_limit_file_size)
  assert proc.returncode == 2, proc.stderr[-3000:]
  # orbax's background threads may log their own ERROR lines after ours; ours is the one line
  # the CLI prints with the "error: " prefix.
  ours = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(ours) == 1, proc.stderr[-3000:]
  last = ours[0]
  assert last.startswith("error: Saving checkpoint step 25") and "File too large" in last, last
  assert "checkpoint step 20 is intact" in last and "rerun the same command" in last, last
  assert committed_steps(wd) == [5, 10, 15, 20]
  assert not unchanged(before, snapshot(wd / "checkpoints"))
  assert list((wd / "checkpoints").glob("25.orbax-checkpoint-tmp*"))  # The partial step.
  run_in_process(wd, pretrain_dataset, vocab_path)  # Resumes from 20, not 25.
  assert losses(wd) == losses(fault_reference)
  assert equal_trees(final_params(wd), final_params(fault_reference))
