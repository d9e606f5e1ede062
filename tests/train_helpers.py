"""Running the pretraining CLI in subprocesses (fake device counts, kills, two hosts)."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def env_for(devices: int = 1, cache_dir=None) -> dict:
  """The environment of a CLI subprocess with `devices` fake CPU devices. `cache_dir`: an XLA
  compilation cache of its own, for a process the test kills (it could die while writing an
  entry of the shared cache, tests/conftest.py)."""
  env = dict(os.environ)
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO)
  env.pop("BERT_JAX_COORDINATOR", None)
  return env


def pretrain_cmd(workdir, data_dir, vocab, *overrides, variant="tiny") -> list[str]:
  return [sys.executable, "-m", "bert_jax.cli.pretrain",
          f"--config={REPO}/configs/pretrain.py:{variant}", f"--workdir={workdir}",
          f"--config.data.dir={data_dir}", f"--config.data.vocab={vocab}", *overrides]


def run_pretrain(workdir, data_dir, vocab, *overrides, devices=1, timeout=300, check=True):
  proc = subprocess.run(pretrain_cmd(workdir, data_dir, vocab, *overrides), env=env_for(devices),
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f"pretrain failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def losses(workdir) -> dict[int, float]:
  """step -> train loss from metrics.jsonl; a step logged twice (re-run after a kill) must agree."""
  out: dict[int, float] = {}
  for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8"):
    row = json.loads(line)
    if "train/loss" in row:
      step, loss = row["step"], row["train/loss"]
      assert out.get(step, loss) == loss, f"step {step} logged {out[step]} then {loss}"
      out[step] = loss
  return out


def committed_steps(workdir) -> list[int]:
  """Steps with a committed checkpoint (orbax renames a finished step to its bare number)."""
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def final_params(workdir):
  from bert_jax import model_dir
  _, _, params = model_dir.read_model_dir(os.path.join(workdir, "model"))
  return params


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
