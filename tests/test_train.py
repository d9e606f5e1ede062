"""The pretraining loop end to end on real data: CLI, sharding, two hosts, exact resume,
restores across meshes, and the refusals of bad input. Runs the CLI in subprocesses so each can
have its own (fake) device count, be killed, or join a two-process jax.distributed group."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from train_helpers import (
  REPO,
  committed_steps,
  env_for,
  final_params,
  free_port,
  losses,
  pretrain_cmd,
  run_pretrain,
)

MESH_222 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
FIVE_STEPS = ("--config.train.num_steps=5", "--config.data.num_shards=2")


def _equal_trees(a, b) -> bool:
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(_equal_trees(a[k], b[k]) for k in a)
  return np.array_equal(np.asarray(a), np.asarray(b))


def test_tiny_pretrain_end_to_end(tmp_path, pretrain_dataset, vocab_path):
  wd = tmp_path / "run"
  proc = run_pretrain(wd, pretrain_dataset, vocab_path)
  assert "completed at step 2" in proc.stdout
  assert sorted(losses(wd)) == [1, 2]
  for name in ("metrics.jsonl", "summary.json", "model/bert_config.json", "model/vocab.txt"):
    assert (wd / name).exists(), name
  assert any((wd / "tensorboard").iterdir())
  assert (wd / "checkpoints" / "2").is_dir()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, pretrain_dataset, vocab_path):
  """5 steps on 8 simulated devices as (data, fsdp, tensor) = (2, 2, 2), two data shards."""
  wd = tmp_path_factory.mktemp("sharded") / "run"
  run_pretrain(wd, pretrain_dataset, vocab_path, *FIVE_STEPS, *MESH_222, devices=8)
  return wd


@pytest.mark.xdist_group("sharded")
def test_sharded_matches_single_device(tmp_path, sharded_run, pretrain_dataset, vocab_path):
  single = tmp_path / "single"
  run_pretrain(single, pretrain_dataset, vocab_path, *FIVE_STEPS, devices=1)
  a, b = losses(single), losses(sharded_run)
  assert sorted(a) == [1, 2, 3, 4, 5]
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


@pytest.mark.xdist_group("sharded")
def test_two_processes_match_single_process(tmp_path, sharded_run, pretrain_dataset, vocab_path):
  wd = tmp_path / "two_hosts"
  port = free_port()
  procs = []
  for pid in range(2):
    cmd = pretrain_cmd(wd, pretrain_dataset, vocab_path, *FIVE_STEPS, *MESH_222,
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={pid}")
    procs.append(subprocess.Popen(cmd, env=env_for(4), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  a, b = losses(wd), losses(sharded_run)
  assert sorted(a) == [1, 2, 3, 4, 5]
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


@pytest.mark.xdist_group("sharded")
def test_checkpoint_from_222_mesh_restores_on_one_device(tmp_path, sharded_run,
                                                         pretrain_dataset, vocab_path):
  wd = tmp_path / "moved"
  shutil.copytree(sharded_run, wd)
  proc = run_pretrain(wd, pretrain_dataset, vocab_path, "--config.train.num_steps=8",
                      "--config.data.num_shards=2", devices=1)
  assert "Resumed from" in proc.stderr
  assert "completed at step 8" in proc.stdout
  assert sorted(losses(wd)) == list(range(1, 9))


RESUME = ("--config.train.num_steps=60", "--config.checkpoint.every_steps=10",
          "--config.checkpoint.async_save=True", "--config.train.log_every=1")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, pretrain_dataset, vocab_path):
  wd = tmp_path_factory.mktemp("reference") / "run"
  run_pretrain(wd, pretrain_dataset, vocab_path, *RESUME)
  return wd


def _wait_for(predicate, proc, err_path, timeout=600):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"run ended ({proc.returncode}) before the interruption:\n"
                           f"{err_path.read_text()[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError(f"timed out waiting for the run to progress:\n"
                           f"{err_path.read_text()[-3000:]}")
    time.sleep(0.02)


def _logged_steps(wd) -> int:
  path = wd / "metrics.jsonl"
  return sum(1 for _ in open(path)) if path.exists() else 0


@pytest.mark.xdist_group("resume")
@pytest.mark.parametrize("how", ["sigterm", "sigkill_after_commit"])
def test_interrupted_run_resumes_bitwise(tmp_path, how, reference_run, pretrain_dataset,
                                         vocab_path):
  wd = tmp_path / "run"
  # Output goes to files, not pipes: an unread pipe could stall the child on a busy machine.
  out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
  with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
    proc = subprocess.Popen(pretrain_cmd(wd, pretrain_dataset, vocab_path, *RESUME),
                            env=env_for(1, cache_dir=tmp_path / "xla-cache"), cwd=REPO,
                            stdout=out_f, stderr=err_f, text=True)
    if how == "sigterm":
      stop_after = int(np.random.default_rng(0).integers(3, 40))
      _wait_for(lambda: _logged_steps(wd) >= stop_after, proc, err_path)
      t0 = time.time()
      proc.send_signal(signal.SIGTERM)
      proc.wait(timeout=120)
      assert proc.returncode == 0, err_path.read_text()[-2000:]
      assert "preempted" in out_path.read_text()
      assert time.time() - t0 < 60
    else:
      _wait_for(lambda: max(committed_steps(wd), default=0) >= 20, proc, err_path)
      proc.kill()
      proc.wait()
  interrupted_at = max(losses(wd))
  assert interrupted_at < 60
  run_pretrain(wd, pretrain_dataset, vocab_path, *RESUME)
  assert losses(wd) == losses(reference_run)  # Every step, re-run steps included, identical.
  assert _equal_trees(final_params(wd), final_params(reference_run))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, pretrain_dataset, vocab_path):
  wd = tmp_path / "run"
  proc = run_pretrain(wd, pretrain_dataset, vocab_path, "--config.optimizer.learning_rate=1e30",
                      "--config.train.num_steps=30", "--config.checkpoint.every_steps=1",
                      "--config.optimizer.clip_norm=0", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  msg = proc.stderr.strip().splitlines()[-1]
  assert "NaN/Inf at step" in msg and "last good checkpoint" in msg
  step = int(msg.split("at step ")[1].split(";")[0])
  kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert kept and max(kept) < step


# ----------------------------------------------------------------------------- bad input


def _refused(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for n in needles:
    assert n in last, last
  return last


def test_misspelt_config_key_is_named(tmp_path, pretrain_dataset, vocab_path):
  proc = run_pretrain(tmp_path / "w", pretrain_dataset, vocab_path,
                      "--config.optimizer.learning_rat=1e-3", check=False)
  _refused(proc, "learning_rat", "learning_rate")
  assert not (tmp_path / "w").exists()


def test_workdir_with_other_model_is_refused_and_kept(tmp_path, pretrain_dataset, vocab_path):
  wd = tmp_path / "run"
  run_pretrain(wd, pretrain_dataset, vocab_path)
  before = sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))
  proc = run_pretrain(wd, pretrain_dataset, vocab_path, "--config.model.hidden_size=64",
                      check=False)
  _refused(proc, "different model", "Nothing was deleted")
  after = sorted(str(p.relative_to(wd)) for p in wd.rglob("*"))
  assert set(before) <= set(after)


def test_unwritable_workdir(tmp_path, pretrain_dataset, vocab_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  proc = run_pretrain(blocker / "run", pretrain_dataset, vocab_path, check=False)
  _refused(proc, "not writable")
  assert blocker.read_text() == "not a directory"


def test_init_from_pointing_nowhere(tmp_path, pretrain_dataset, vocab_path):
  proc = run_pretrain(tmp_path / "w", pretrain_dataset, vocab_path,
                      f"--config.init_from={tmp_path}/nowhere", check=False)
  _refused(proc, "init_from", "nowhere")


def test_dataset_of_another_vocabulary(tmp_path, pretrain_dataset):
  other = REPO / "tests" / "data" / "botchan_en_unigram_1000.model"
  proc = run_pretrain(tmp_path / "w", pretrain_dataset, other, check=False)
  _refused(proc, "vocabulary")


def test_batch_not_divisible_by_data_parallel(tmp_path, pretrain_dataset, vocab_path):
  proc = run_pretrain(tmp_path / "w", pretrain_dataset, vocab_path,
                      "--config.train.batch_size=6", "--config.mesh.data=4", devices=4,
                      check=False)
  _refused(proc, "batch_size=6")


def test_every_config_file_loads():
  import importlib.util
  helpers = ("__init__.py", "common.py")  # the package and what the configs share
  for path in sorted(p for p in (REPO / "configs").glob("*.py") if p.name not in helpers):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    variants = getattr(module, "VARIANTS", None) or [None]
    for variant in variants:
      config = module.get_config(variant) if variant else module.get_config()
      assert config.train.batch_size > 0, (path.name, variant)


def test_url_workdir_is_refused(tmp_path, pretrain_dataset, vocab_path):
  proc = run_pretrain("gs://bucket/run", pretrain_dataset, vocab_path, check=False)
  _refused(proc, "gs://bucket/run", "mount the bucket")
  assert not (REPO / "gs:").exists()
