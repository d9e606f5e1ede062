"""benchmarks/pretrain_step.py refuses bad arguments with one sentence, before any measuring.

Runs the module in a subprocess (its absl flags would clash with the CLIs' in this process). No
peer venv or GPU is needed: every case here stops at argument checking.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(_REPO), BENCH_VENV=str(tmp_path / "no-venv"))
  return subprocess.run([sys.executable, "-m", "benchmarks.pretrain_step", *args], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("args,message", [
    (["--cases=base:8"], "is not PRESET:BATCHxSEQ"),
    (["--cases=huge:8x128"], "unknown preset 'huge'"),
    (["--cases=base:8x128:200"], "fewer predictions than positions"),
    (["--peer_variants=pytorch:nope"], "Unknown peer variants ['pytorch:nope']"),
    (["--peers=tensorflow"], "Unknown peers ['tensorflow']"),
    (["--cases=tiny:2x32"], "No peer virtualenv at"),
    (["--rounds=0"], "--rounds=0: run at least one round"),
    (["--gpu", "--gpu_cases=base:1024"], "Unknown --gpu_cases / --gpu_attention entries"),
])
def test_bad_arguments_say_what_to_do(args, message, tmp_path):
  proc = _run(*args, tmp_path=tmp_path)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert list(tmp_path.iterdir()) == []  # Nothing written.


@pytest.mark.parametrize("module", ["benchmarks.inference", "benchmarks.embed_latency"])
def test_benchmarks_sharing_flags_start(module, tmp_path):
  """embed_latency reads benchmarks.inference's flags (--workdir, --corpus_dir, --rounds) and
  defines only its own: a flag defined in both would stop it at import."""
  env = dict(os.environ, PYTHONPATH=str(_REPO))
  proc = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120, env=env)
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "--rounds" in proc.stdout and "--workdir" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("args,message", [
    (["--stacks=bert_jax:fast"], "Unknown stacks ['bert_jax:fast']"),
    (["--rounds=0"], "--rounds=0: run at least one round"),
])
def test_inference_bad_arguments_say_what_to_do(args, message, tmp_path):
  """Refused before the ONNX exports are prepared: nothing is written to --workdir."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for name in ("mobydick.en.txt", "web-bible.en.txt"):
    (corpus / name).write_text("x\n", encoding="utf-8")
  work = tmp_path / "work"
  env = dict(os.environ, PYTHONPATH=str(_REPO))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.inference", f"--corpus_dir={corpus}",
                         f"--workdir={work}", *args], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, env=env)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not work.exists()
