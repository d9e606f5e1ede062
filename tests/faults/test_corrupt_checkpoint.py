"""A corrupted checkpoint (flipped bytes, a truncated file, missing metadata) is refused with the
step named and the way back to the previous one; following that advice resumes bitwise.
orbax does not checksum array data: flipped bytes are caught by the per-array checksums the
Checkpointer stores in `meta` at save and verifies at restore."""
from __future__ import annotations

import os
import shutil

import pytest
from train_helpers import final_params, losses, run_pretrain

from bert_jax.checkpoint import CheckpointError
from faults.fault_helpers import (
  FAULT_RUN,
  committed_steps,
  equal_trees,
  restore,
  run_in_process,
  snapshot,
  unchanged,
)


def _biggest_data_file(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _flip(step_dir):
  path = _biggest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  data[len(data) // 3] ^= 0x04
  path.write_bytes(bytes(data))


def _truncate(step_dir):
  path = _biggest_data_file(step_dir)
  os.truncate(path, path.stat().st_size // 2)


def _no_array_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def _no_meta(step_dir):
  shutil.rmtree(step_dir / "meta")


CORRUPTIONS = {"flipped_byte": (_flip, "is corrupt"),
               "truncated": (_truncate, "cannot be restored"),
               "no_array_metadata": (_no_array_metadata, "cannot be restored"),
               "no_meta": (_no_meta, "cannot be restored")}


@pytest.fixture
def corrupt_copy(tmp_path, fault_reference):
  def make(how):
    wd = tmp_path / how
    shutil.copytree(fault_reference / "checkpoints", wd / "checkpoints")
    CORRUPTIONS[how][0](wd / "checkpoints" / "40")
    return wd
  return make


@pytest.mark.faults
@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corruption_is_refused_naming_the_step(how, corrupt_copy, pretrain_dataset, vocab_path):
  wd = corrupt_copy(how)
  with pytest.raises(CheckpointError) as e:
    restore(wd, 40, pretrain_dataset, vocab_path)
  msg = str(e.value)
  assert "Checkpoint step 40" in msg and CORRUPTIONS[how][1] in msg, msg
  assert f"{wd / 'checkpoints' / '40'} out of the way" in msg and "back to step 35" in msg, msg
  restore(wd, 35, pretrain_dataset, vocab_path)  # The previous one is intact.


@pytest.mark.faults
def test_cli_refuses_then_falls_back_as_told(corrupt_copy, fault_reference, pretrain_dataset,
                                             vocab_path):
  wd = corrupt_copy("flipped_byte")
  before = snapshot(wd)
  proc = run_pretrain(wd, pretrain_dataset, vocab_path, *FAULT_RUN, "--config.train.num_steps=45",
                      check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Checkpoint step 40") and "is corrupt" in last, last
  assert "Traceback" not in proc.stderr
  assert not unchanged(before, snapshot(wd))  # Nothing changed or deleted.
  shutil.move(wd / "checkpoints" / "40", wd.parent / "step40-corrupt")  # The advice.
  run_in_process(wd, pretrain_dataset, vocab_path)
  assert committed_steps(wd) == list(range(5, 45, 5))
  assert equal_trees(final_params(wd), final_params(fault_reference))
  ref = losses(fault_reference)
  assert all(ref[s] == v for s, v in losses(wd).items())
