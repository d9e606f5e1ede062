"""Keeping the processes of a multi-process run in step where XLA's own timeouts are short."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax._src import distributed  # The client orbax and MaxText use for barriers too.


class SyncedCompile:
  """In a multi-process run: compile each new input signature, wait for every process, then run.

  XLA:CPU's gloo collectives give the peers 30 s (fixed in XLA) to reach the first collective
  of a program; a process that compiles or reads its first batch more slowly (a loaded host)
  aborts the whole run. The coordination-service barrier here waits as long as
  `timeout_s`. One process: the jitted function is called directly.
  """

  def __init__(self, jitted, name: str, timeout_s: int = 1800):
    self.jitted, self.name, self.timeout_s = jitted, name, timeout_s
    self.compiled: dict[Any, Any] = {}

  def __call__(self, *args):
    if jax.process_count() == 1:
      return self.jitted(*args)
    leaves, treedef = jax.tree.flatten(args)
    signature = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
    if signature not in self.compiled:
      compiled = self.jitted.lower(*args).compile()
      barrier(f"{self.name}_{len(self.compiled)}", self.timeout_s)
      self.compiled[signature] = compiled
    return self.compiled[signature](*args)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (the jax.distributed coordination service)."""
  if jax.process_count() > 1:
    distributed.global_state.client.wait_at_barrier(f"bert_jax_{name}", timeout_s * 1000)

