"""Two processes on one workdir: the second refuses (one line, exit 2) and changes nothing; then
SIGTERM at a random step makes the first save that step and exit 0 within a bounded time.
(SIGTERM/SIGKILL resumes are checked bitwise in tests/test_train.py::
test_interrupted_run_resumes_bitwise.)"""
from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest
from train_helpers import REPO, env_for, losses, pretrain_cmd, run_pretrain

from bert_jax.checkpoint import CheckpointError, WorkdirLock
from faults.fault_helpers import committed_steps, snapshot, unchanged

LONG = ("--config.train.num_steps=100000", "--config.checkpoint.every_steps=50",
        "--config.train.log_every=1")


def test_lock_is_exclusive_in_process(tmp_path):
  a, b = WorkdirLock(str(tmp_path)), WorkdirLock(str(tmp_path))
  a.acquire()
  with pytest.raises(CheckpointError, match="Another run"):
    b.acquire()
  a.release()
  b.acquire()  # Free again once released.
  b.release()


@pytest.mark.faults
def test_second_process_refuses_and_sigterm_saves_in_bounded_time(tmp_path, pretrain_dataset,
                                                                  vocab_path):
  wd = tmp_path / "run"
  first = subprocess.Popen(pretrain_cmd(wd, pretrain_dataset, vocab_path, *LONG), env=env_for(1),
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  stop_after = int(np.random.default_rng(3).integers(5, 30))
  t0 = time.time()
  while not ((wd / "metrics.jsonl").exists() and max(losses(wd), default=0) >= stop_after):
    assert first.poll() is None and time.time() - t0 < 200, "the first run did not progress"
    time.sleep(0.05)
  before = snapshot(wd / "checkpoints") if (wd / "checkpoints").exists() else {}
  second = run_pretrain(wd, pretrain_dataset, vocab_path, *LONG, check=False)
  assert second.returncode == 2
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: Another run (pid {first.pid}) is using workdir {wd}"), last
  assert "Traceback" not in second.stderr
  assert not unchanged(before, snapshot(wd / "checkpoints"))
  assert first.poll() is None  # Undisturbed.

  t_term = time.time()
  first.send_signal(signal.SIGTERM)
  out, err = first.communicate(timeout=120)
  elapsed = time.time() - t_term
  assert first.returncode == 0, err[-2000:]
  assert "preempted at step" in out
  stopped = int(out.split("preempted at step ")[1].split(";")[0])
  assert elapsed < 20, elapsed  # Saving a tiny state: well under a second plus shutdown.
  assert committed_steps(wd)[-1] == stopped == max(losses(wd))
