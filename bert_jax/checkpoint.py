"""Training checkpoints: train state, data-iterator position and config, saved together.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `state` is the sharded train state
(orbax StandardSave), `data` holds one JSON file per process with that process's input-iterator
state, `meta` the config and model shape. Saves are asynchronous; a killed save leaves only a
`*.orbax-checkpoint-tmp` directory, which orbax never restores.

Resume order (see `train.py`): this workdir's latest checkpoint, else `init_from` (a model
directory), else fresh initialisation.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used, with what to do about it."""


class DataStateHandler(ocp.CheckpointHandler):
  """Input-iterator positions as JSON files.

  A state `{"shards": {id: state}}` (train.ShardedIterator) is written one file per data shard,
  so a run can resume on another number of processes; any other state is written per process.
  """

  def save(self, directory: epath.Path, args: "DataStateSave"):
    state = args.state
    if isinstance(state, dict) and "shards" in state:
      for shard, shard_state in state["shards"].items():
        (directory / f"shard_{int(shard):05d}.json").write_text(json.dumps(shard_state))
    else:
      name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
      (directory / name).write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: "DataStateRestore" = None):
    shard_files = sorted(directory.glob("shard_*.json"))
    if shard_files:
      return {"shards": {str(int(p.name[6:11])): json.loads(p.read_text())
                         for p in shard_files}}
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = directory / name
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir())
      raise CheckpointError(
          f"{path} is missing (found {found}): the checkpoint was written by a different number "
          f"of processes; resume with the same process count, or start from it with init_from.")
    return json.loads(path.read_text())

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  """orbax CheckpointManager for train state + data position + metadata."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    # orbax refuses relative paths ("Checkpoint path should be absolute"); URLs stay as they are.
    absolute = workdir if "://" in str(workdir) else os.path.abspath(workdir)
    self.directory = epath.Path(absolute) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True),
        item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state, meta: dict, *, force: bool = False) -> bool:
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=DataStateSave(data_state), meta=ocp.args.JsonSave(meta)),
        force=force)

  def read_meta(self, step: int) -> dict:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
          "meta"]
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint.
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} has unreadable metadata ({e}); delete "
          f"that step's directory to fall back to the previous checkpoint.") from e

  def restore(self, step: int, abstract_state):
    """Restores (state, data_state, meta) of `step` onto the shardings of `abstract_state`."""
    try:
      out = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        data=DataStateRestore(), meta=ocp.args.JsonRestore()))
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} cannot be restored ({type(e).__name__}: "
          f"{str(e)[:300]}); delete that step's directory to fall back to the previous "
          f"checkpoint.") from e
    return out["state"], out["data"], out["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock so two runs never write into the same workdir."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self.fd = None

  def acquire(self) -> None:
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(self.fd, 100).decode(errors="replace").strip()
      os.close(self.fd)
      self.fd = None
      raise CheckpointError(
          f"Another run (pid {holder or '?'}) is using workdir {os.path.dirname(self.path)}; "
          f"wait for it to finish or choose another --workdir.") from None
    os.ftruncate(self.fd, 0)
    os.write(self.fd, str(os.getpid()).encode())

  def release(self) -> None:
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None
