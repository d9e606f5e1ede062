"""Training checkpoints: train state, data-iterator position and config, saved together.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `state` is the sharded train state
(orbax StandardSave), `data` holds one JSON file per process with that process's input-iterator
state, `meta` the config, model shape and a checksum of every array of the state. Saves are
asynchronous; a killed save leaves only a `*.orbax-checkpoint-tmp` directory, which orbax never
restores. orbax does not checksum array data (a flipped byte restores silently), so `restore`
recomputes the checksums saved in `meta` and refuses a state that does not match them.

Resume order (see `train.py`): this workdir's latest checkpoint, else `init_from` (a model
directory), else fresh initialisation.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from bert_jax import multihost
from bert_jax.errors import CheckpointError


class DataStateHandler(ocp.CheckpointHandler):
  """Input-iterator positions as JSON files.

  A state `{"shards": {id: state}}` (bert_jax.data.shards.ShardedIterator) is written one file
  per data shard, so a run can resume on another number of processes; any other state is written
  per process.
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


def _array_checksum(x: jax.Array) -> jax.Array:
  """sum(bits_i * (2i + 1)) mod 2**32 over the raw bits: any changed element changes it."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)
  bits = bits.reshape(-1)
  weights = jax.lax.iota(jnp.uint32, bits.size) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)  # uint32 wraps: exact on any sharding.


_checksums = multihost.SyncedCompile(
    jax.jit(lambda tree: jax.tree.map(_array_checksum, tree)), "checksums")


def state_checksums(state) -> dict[str, int]:
  """{array path: uint32 checksum} of a (possibly sharded) pytree, computed on device."""
  sums = jax.device_get(_checksums(state))
  return {jax.tree_util.keystr(path): int(v)
          for path, v in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _write_error(step: int, e: Exception) -> str:
  """The cause of a failed write in a few words (tensorstore puts an errno in its message)."""
  text = str(e)
  m = re.search(r"os_error_code='?(\d+)", text)
  if m:
    return f"{os.strerror(int(m.group(1)))}, errno {m.group(1)}"
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: Exception) -> str:
  text = str(e).split(" See full TensorStore details")[0].strip()
  return text.splitlines()[0][:300] if text else ""


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
    self._pending: int | None = None  # The step of the save in flight.
    self._failed = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_state, meta: dict, *, force: bool = False) -> bool:
    """Starts saving `step` (asynchronously); a failed write raises CheckpointError."""
    if not force and not self.manager.should_save(step):
      return False
    meta = {**meta, "state_checksums": state_checksums(state)}
    self._pending = step
    try:
      return self.manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=DataStateSave(data_state), meta=ocp.args.JsonSave(meta)),
          force=force)
    except Exception as e:  # noqa: BLE001 - the previous async save or this one failed.
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int, e: Exception) -> CheckpointError:
    self._failed = True
    m = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
    failed = int(m.group(1)) if m else (self._pending if self._pending is not None else step)
    kept = [s for s in self.manager.all_steps(read=True) if s < failed]
    previous = (f"checkpoint step {max(kept)} is intact" if kept
                else "no earlier checkpoint exists")
    return CheckpointError(
        f"Saving checkpoint step {failed} to {self.directory} failed ({_write_error(failed, e)}); "
        f"{previous} and the partial step is never restored: free disk space (or fix the "
        f"storage) and rerun the same command to resume.")

  def read_meta(self, step: int) -> dict:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
          "meta"]
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint.
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} has unreadable metadata "
          f"({type(e).__name__}: {_first_line(e)}); {self._fallback(step)}") from e

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
          f"{_first_line(e)}); {self._fallback(step)}") from e
    saved = out["meta"].get("state_checksums") if isinstance(out["meta"], dict) else None
    if saved:  # Checkpoints written before checksums existed are restored unchecked.
      got = state_checksums(out["state"])
      bad = sorted(k for k in saved if got.get(k) != saved[k]) + sorted(set(got) - set(saved))
      if bad:
        raise CheckpointError(
            f"Checkpoint step {step} in {self.directory} is corrupt: {len(bad)} arrays (first: "
            f"{bad[0]}) do not match the checksums saved with them; {self._fallback(step)}")
    return out["state"], out["data"], out["meta"]

  def _fallback(self, step: int) -> str:
    older = [s for s in self.all_steps() if s < step]
    target = f"step {max(older)}" if older else "a fresh start (no earlier checkpoint)"
    return (f"move {self.directory / str(step)} out of the way (or delete it) and rerun to fall "
            f"back to {target}.")

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(self._pending or 0, e) from e

  def close(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      if not self._failed:  # Already reported by save()/wait().
        raise self._save_failed(self._pending or 0, e) from e
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
