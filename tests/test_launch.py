"""launch/: every launcher's --dry-run prints the commands it would run (checked here, remote shell
payloads included, with `bash -n`), bad arguments exit 2, and local_multiprocess.sh really trains
with two jax.distributed processes of two CPU devices each."""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


def launch(script: str, *args: str, env: dict | None = None, timeout: float = 60):
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def commands(stdout: str) -> list[list[str]]:
  """The `+ ...` commands of a dry run, split into words as the shell would."""
  chunks = ("\n" + stdout).split("\n+ ")[1:]
  out = []
  for chunk in chunks:
    # A command ends at the first line where its quotes are balanced.
    lines, text = chunk.split("\n"), ""
    for line in lines:
      text = f"{text}\n{line}" if text else line
      try:
        out.append(shlex.split(text))
        break
      except ValueError:
        continue
  return out


def assert_shell_syntax(script: str) -> None:
  r = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
  assert r.returncode == 0, f"bad shell syntax: {r.stderr}\n{script}"


def option(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def detached_script(remote: str) -> str:
  """The script of the `nohup bash -c SCRIPT` inside a remote command."""
  words = shlex.split(remote)
  return words[words.index("nohup") + 3]


# ----------------------------------------------------------------------------- TPU VM
def test_tpu_vm_pod_dry_run_prints_every_step():
  r = launch("tpu_vm_pod.sh", "--dry-run", "--name=bert-base", "--zone=us-east5-b",
             "--accelerator=v5litepod-16", "--bucket=gs://my-bucket/ignored", "--project=proj",
             "--spot", "--config=configs/pretrain.py:base", "--", "--config.mesh.fsdp=16",
             "--config.train.batch_size=512")
  assert r.returncode == 0, r.stderr
  cmds = commands(r.stdout)
  steps = [" ".join(c[:5]) for c in cmds]
  assert steps[0] == "gcloud compute tpus tpu-vm create"
  create = cmds[0]
  assert create[5] == "bert-base" and "--spot" in create
  assert option(create, "--accelerator-type") == "v5litepod-16"
  assert option(create, "--version") == "v2-alpha-tpuv5-lite"
  assert option(create, "--zone") == "us-east5-b" and option(create, "--project") == "proj"
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  # install (all), prepare (worker 0), run (all), wait (all), copy logs (all)
  assert [option(c, "--worker") for c in ssh] == ["all", "0", "all", "all", "all"]
  for c in ssh:
    assert_shell_syntax(option(c, "--command"))
  install, prepare, run, wait, logs = (option(c, "--command") for c in ssh)
  assert "gcsfuse --implicit-dirs my-bucket /gcs/my-bucket" in install
  assert 'pip install -q -e "$HOME/bert_jax[tpu]"' in install
  assert "apt-get -qq install -y libtcmalloc-minimal4" in install  # bert_jax/allocator.py
  assert "gs://my-bucket/data/bible/" in prepare and "bert_jax.cli.prepare" in prepare
  # The training command inside the detached `bash -c '...'`, word by word.
  train = shlex.split(detached_script(run).split("; echo $?")[0])
  assert train[:4] == ["BERT_JAX_DISTRIBUTED=auto", "python3", "-m", "bert_jax.cli.pretrain"]
  assert option(train, "--workdir") == "/gcs/my-bucket/runs/bert-base"
  assert option(train, "--config.data.dir") == "/gcs/my-bucket/data/bible"
  assert train[-2:] == ["--config.mesh.fsdp=16", "--config.train.batch_size=512"]
  assert "bert_jax_run.rc" in wait and "/gcs/my-bucket/runs/bert-base/logs/" in logs
  assert ["gcloud", "storage", "cp", "-r", "gs://my-bucket/runs/bert-base/logs"] == cmds[-3][:5]
  assert cmds[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bert-base"]
  assert "--quiet" in cmds[-1]


def test_tpu_vm_pod_steps_and_quoting():
  r = launch("tpu_vm_pod.sh", "--dry-run", "--name=t", "--zone=z", "--bucket=b",
             "--steps=run", "--workdir=/runs/x y", "--", "--config.init_from=/gcs/b/it's")
  assert r.returncode == 0, r.stderr
  (ssh,) = commands(r.stdout)
  run = option(ssh, "--command")
  assert_shell_syntax(run)
  train = shlex.split(detached_script(run).split("; echo $?")[0])
  assert option(train, "--workdir") == "/gcs/b/runs/x y"
  assert train[-1] == "--config.init_from=/gcs/b/it's"


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--bucket=b"], "--name, --zone and --bucket are required"),
    (["--name=n", "--zone=z", "--bucket=b"], "--accelerator"),
    (["--name=n", "--zone=z", "--bucket=b", "--steps=run,fly"], "unknown step 'fly'"),
    (["--name=n", "--zone=z", "--bucket=b", "--colour=red"], "unknown option --colour=red"),
])
def test_tpu_vm_pod_refuses_bad_arguments(args, message):
  r = launch("tpu_vm_pod.sh", "--dry-run", *args)
  assert r.returncode == 2 and message in r.stderr and not r.stdout.count("+ gcloud")


# ----------------------------------------------------------------------------- GKE
def test_gke_jobset_dry_run_renders_a_valid_manifest():
  yaml = pytest.importorskip("yaml")
  r = launch("gke/jobset.sh", "--dry-run", "--name=bert-base", "--bucket=gs://bk",
             "--accelerator=tpu-v5p-slice", "--topology=2x2x4", "--chips_per_host=4",
             "--", "--config.mesh.fsdp=16")
  assert r.returncode == 0, r.stderr
  assert "+ kubectl apply -f - <<'EOF'\n" in r.stdout
  manifest = yaml.safe_load(r.stdout.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0])
  assert manifest["kind"] == "JobSet" and manifest["metadata"]["name"] == "bert-base"
  job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
  assert job["parallelism"] == job["completions"] == 4  # 16 chips / 4 per host
  pod = job["template"]["spec"]
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                 "cloud.google.com/gke-tpu-topology": "2x2x4"}
  container = pod["containers"][0]
  assert container["resources"]["limits"]["google.com/tpu"] == 4
  assert container["volumeMounts"][0]["mountPath"] == "/gcs/bk"
  assert pod["volumes"][0]["csi"]["volumeAttributes"]["bucketName"] == "bk"
  script = container["args"][0]
  assert_shell_syntax(script)
  train = shlex.split(script.split("exec ", 1)[1])
  assert train[:3] == ["python3", "-m", "bert_jax.cli.pretrain"]
  assert option(train, "--workdir") == "/gcs/bk/runs/bert-base"
  assert train[-1] == "--config.mesh.fsdp=16"
  assert "xpk workload create" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--name=Bad_Name", "--bucket=b"], "DNS label"),
    (["--name=n", "--bucket=b", "--topology=4x4", "--chips_per_host=3"], "not a multiple"),
    (["--name=n"], "--bucket are required"),
])
def test_gke_jobset_refuses_bad_arguments(args, message):
  r = launch("gke/jobset.sh", "--dry-run", *args)
  assert r.returncode == 2 and message in r.stderr and "kubectl" not in r.stdout


# ----------------------------------------------------------------------------- Slurm
def test_slurm_dry_run_prints_the_srun_line():
  r = launch("slurm/pretrain.sbatch", "--dry-run", "--workdir=/shared/run",
             "--data=/shared/data", "--config=configs/pretrain.py:large", "--",
             "--config.mesh.fsdp=8")
  assert r.returncode == 0, r.stderr
  (srun,) = commands(r.stdout)
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
  i = srun.index("-m")
  assert srun[i + 1] == "bert_jax.cli.pretrain"
  assert option(srun, "--workdir") == "/shared/run"
  assert option(srun, "--config.data.dir") == "/shared/data"
  assert option(srun, "--config") == "configs/pretrain.py:large"
  assert srun[-1] == "--config.mesh.fsdp=8"
  header = (LAUNCH / "slurm" / "pretrain.sbatch").read_text()
  assert "#SBATCH --signal=TERM@" in header and "#SBATCH --requeue" in header


def test_slurm_refuses_outside_a_job_and_without_paths():
  r = launch("slurm/pretrain.sbatch", "--workdir=/x", "--data=/y",
             env={"SLURM_JOB_ID": ""})
  assert r.returncode == 2 and "not inside a Slurm job" in r.stderr
  r = launch("slurm/pretrain.sbatch", "--dry-run", "--workdir=/x")
  assert r.returncode == 2 and "--data" in r.stderr


# ----------------------------------------------------------------------------- local
def test_local_multiprocess_dry_run():
  r = launch("local_multiprocess.sh", "--dry-run", "--nproc=3", "--cpu_devices=4",
             "--port=4567", "--module=bert_jax.cli.finetune", "--", "--workdir=/tmp/a b")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[-1] == "wait" and len(lines) == 4
  for i, line in enumerate(lines[:3]):
    words = shlex.split(line)
    assert words[0] == "env" and words[-4:] == [">", f"LOGDIR/process_{i}.log", "2>&1", "&"]
    assert "BERT_JAX_COORDINATOR=127.0.0.1:4567" in words
    assert "BERT_JAX_NUM_PROCESSES=3" in words and f"BERT_JAX_PROCESS_ID={i}" in words
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in words
    assert words[words.index("-m") + 1] == "bert_jax.cli.finetune"
    assert "--workdir=/tmp/a b" in words


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, mobydick_path, vocab_path) -> pathlib.Path:
  """A dataset prepared from the first 150 KB of Moby Dick."""
  from bert_jax.data import prepare
  root = tmp_path_factory.mktemp("local_mp")
  text = mobydick_path.read_bytes()[:150_000].decode("utf-8", "ignore")
  (root / "mobydick.txt").write_text(text, encoding="utf-8")
  prepare([str(root / "mobydick.txt")], str(root / "data"), str(vocab_path), layout="lines",
          doc_lines=16, validation_fraction=0.1, num_workers=1)
  return root / "data"


def test_local_multiprocess_trains_with_two_processes(tiny_dataset, vocab_path, tmp_path):
  workdir, logdir = tmp_path / "run", tmp_path / "logs"
  r = launch("local_multiprocess.sh", "--nproc=2", "--cpu_devices=2", f"--port={free_port()}",
             f"--logdir={logdir}", "--", "--config=configs/pretrain.py:tiny",
             f"--workdir={workdir}", f"--config.data.dir={tiny_dataset}",
             f"--config.data.vocab={vocab_path}", "--config.train.num_steps=2",
             env={"PYTHON": sys.executable, "PYTHONPATH": str(REPO)}, timeout=500)
  logs = {i: (logdir / f"process_{i}.log").read_text() for i in range(2)}
  assert r.returncode == 0, r.stderr + logs[0] + logs[1]
  assert "completed at step 2" in r.stdout  # process 0's log, shown at the end
  assert "completed at step 2" in logs[1]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["step"] == 2
  ckpt = workdir / "checkpoints" / "2"
  # Both processes wrote their part of the sharded state and their own data position.
  assert (ckpt / "state" / "array_metadatas" / "process_1").exists()
  assert sorted(p.name for p in (ckpt / "data").glob("shard_*.json")) == [
      "shard_00000.json", "shard_00001.json"]
  assert (workdir / "model" / "bert_config.json").is_file()


def test_local_multiprocess_stops_on_a_failed_process(tmp_path):
  r = launch("local_multiprocess.sh", "--nproc=2", f"--port={free_port()}",
             f"--logdir={tmp_path}", "--", "--config=configs/pretrain.py:tiny",
             f"--workdir={tmp_path / 'run'}", "--config.train.no_such_key=1",
             env={"PYTHON": sys.executable, "PYTHONPATH": str(REPO)}, timeout=120)
  assert r.returncode == 2
  assert "exited with 2" in r.stderr and "no_such_key" in r.stderr
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- launch/common.sh
@pytest.mark.parametrize("script", ["tpu_vm_pod.sh", "gke/jobset.sh", "slurm/pretrain.sbatch",
                                    "local_multiprocess.sh"])
def test_every_launcher_shares_help_and_option_errors(script):
  r = launch(script, "--help")
  assert r.returncode == 0, r.stderr
  text = r.stdout.splitlines()
  assert len(text) > 5 and not text[0].startswith(("#", "!")) and "SBATCH" not in r.stdout
  assert f"launch/{script}" in r.stdout  # the usage line of its header
  r = launch(script, "--dry-run", "--no_such_option=1")
  name = script.split("/")[-1]
  assert r.returncode == 2 and not r.stdout
  assert f"{name}: error: unknown option --no_such_option=1" in r.stderr


def test_slurm_finds_common_sh_from_its_spooled_copy(tmp_path):
  """sbatch runs a copy of the script from Slurm's spool folder, away from launch/."""
  spooled = tmp_path / "slurm_script"
  spooled.write_text((LAUNCH / "slurm" / "pretrain.sbatch").read_text())
  args = ["bash", str(spooled), "--dry-run", "--workdir=/x", "--data=/y"]
  r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                     env={**os.environ, "SLURM_SUBMIT_DIR": str(REPO)})
  assert r.returncode == 0, r.stderr
  (srun,) = commands(r.stdout)
  assert option(srun, "--chdir") == str(REPO)
  r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                     env={k: v for k, v in os.environ.items() if k != "SLURM_SUBMIT_DIR"})
  assert r.returncode == 2 and "launch/common.sh not found" in r.stderr
