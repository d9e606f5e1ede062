"""kill -9 of the pretraining process at 10 seeded random moments (inside a step, while an async
checkpoint is being written, after the arrays are written but before the step is committed,
during evaluation), resuming after each: every logged loss, every committed checkpoint (state
and data position) and the final parameters are bitwise those of the uninterrupted run.

One run is killed 10 times in sequence and resumed each time (cheaper than 10 runs)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import time

import numpy as np
import pytest
from train_helpers import REPO, env_for, final_params, losses, pretrain_cmd

from faults.fault_helpers import (
  FAULT_RUN,
  NUM_STEPS,
  committed_steps,
  equal_trees,
  restore,
  run_in_process,
  snapshot,
  unchanged,
)

KINDS = ("step", "async_write", "before_commit", "eval")
KILLS = 10


def _lines(wd: pathlib.Path, skip: int = 0) -> list[dict]:
  """metrics.jsonl rows after the first `skip` lines (those of earlier processes)."""
  path = wd / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines()[skip:]:
    try:
      rows.append(json.loads(line))
    except ValueError:  # A line cut by the kill.
      pass
  return rows


def _last_step(wd, skip: int = 0) -> int:
  return max((r["step"] for r in _lines(wd, skip) if "train/loss" in r), default=0)


def _line_count(wd) -> int:
  path = wd / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def _tmp_dirs(wd) -> dict[tuple, pathlib.Path]:
  """Uncommitted step directories by (name, inode, ctime): a rewrite of one counts as new."""
  d = wd / "checkpoints"
  out = {}
  for p in (sorted(d.glob("*.orbax-checkpoint-tmp*")) if d.is_dir() else []):
    try:
      st = p.stat()
    except FileNotFoundError:  # Committed (renamed) meanwhile.
      continue
    out[(p.name, st.st_ino, st.st_ctime_ns)] = p
  return out


def _moment(kind, wd, rng, target):
  """A predicate true at the chosen moment of this process (not a leftover of an earlier one)
  at or after step `target`, and a random delay to wait after it."""
  skip, stale = _line_count(wd), set(_tmp_dirs(wd))

  def new_tmp(inner=None):
    return any(k not in stale and int(p.name.split(".")[0]) >= target
               and (inner is None or (p / inner).is_dir()) for k, p in _tmp_dirs(wd).items())

  if kind == "step":
    return (lambda: _last_step(wd, skip) >= target), float(rng.uniform(0, 0.03))
  if kind == "async_write":  # A step directory being written in the background.
    return new_tmp, float(rng.uniform(0, 0.01))
  if kind == "before_commit":  # Its state item is finalized; the step is not committed yet.
    return (lambda: new_tmp("state")), 0.0
  eval_step = -(-target // 10) * 10  # "eval": right after the train line of an eval step.
  return (lambda: _last_step(wd, skip) >= eval_step), float(rng.uniform(0, 0.05))


def _where(wd, skip) -> str:
  """Where the process died, from what it left on disk, for the report."""
  rows = _lines(wd, skip)
  last = _last_step(wd, skip)
  evaluated = any(k.startswith("eval/") for r in rows if r["step"] == last for k in r)
  tmp = sorted(p.name for p in _tmp_dirs(wd).values())
  return f"last logged step {last}, eval done={evaluated}, uncommitted {tmp}"


@pytest.mark.faults
def test_kill9_at_ten_random_moments_resumes_bitwise(tmp_path, fault_reference, pretrain_dataset,
                                                     vocab_path):
  rng = np.random.default_rng(7)
  wd = tmp_path / "run"
  log = []
  for i in range(KILLS):
    kind = KINDS[i % len(KINDS)]
    target = 2 + 3 * i + int(rng.integers(0, 3))  # Spread over steps 2..33 of 40.
    skip = _line_count(wd)
    committed_before = snapshot(*(wd / "checkpoints" / str(s) for s in committed_steps(wd)))
    proc = subprocess.Popen(pretrain_cmd(wd, pretrain_dataset, vocab_path, *FAULT_RUN),
                            env=env_for(1, cache_dir=tmp_path / "xla-cache"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready, delay = _moment(kind, wd, rng, target)
    t0 = time.time()
    while not ready():
      assert proc.poll() is None, f"kill {i} ({kind}): the run ended first: {proc.stderr.read()}"
      assert time.time() - t0 < 120, f"kill {i} ({kind}): the moment never came"
      time.sleep(0.002)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    log.append(f"kill {i} ({kind}, step >= {target}, +{delay * 1000:.0f} ms): "
               f"{_where(wd, skip)}, committed {committed_steps(wd)}")
    # A kill never touches a checkpoint that was already committed.
    assert not unchanged(committed_before, snapshot(*(wd / "checkpoints" / str(s)
                                                      for s in committed_steps(wd)))), log[-1]
  assert _last_step(wd) < NUM_STEPS, log
  run_in_process(wd, pretrain_dataset, vocab_path)
  print("\n".join(log))

  assert losses(wd) == losses(fault_reference)  # Re-run steps logged the same loss too.
  assert equal_trees(final_params(wd), final_params(fault_reference))
  steps = committed_steps(wd)
  assert steps == committed_steps(fault_reference) == list(range(5, NUM_STEPS + 1, 5))
  assert not _tmp_dirs(wd)  # Partial saves were cleaned up by the later saves.
  for step in steps:  # Every committed checkpoint restores, checksums verified, bitwise equal.
    state, data, _ = restore(wd, step, pretrain_dataset, vocab_path)
    ref_state, ref_data, _ = restore(fault_reference, step, pretrain_dataset, vocab_path)
    assert equal_trees(state, ref_state), step
    assert data == ref_data, step
