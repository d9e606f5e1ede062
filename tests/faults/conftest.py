"""Fixtures of the fault-injection tests: one uninterrupted reference run they all compare with."""
from __future__ import annotations

import pytest

from faults.fault_helpers import run_in_process


@pytest.fixture(scope="session")
def fault_reference(tmp_path_factory, pretrain_dataset, vocab_path):
  """The uninterrupted 40-step run (all checkpoints kept) every interrupted run must equal."""
  wd = tmp_path_factory.mktemp("fault_reference") / "run"
  run_in_process(wd, pretrain_dataset, vocab_path)
  return wd
