"""The wheel, installed outside the checkout, carries its configs and resources and its console
scripts run from another directory.

The wheel is built (`pip wheel --no-deps --no-build-isolation`) from a copy of the package
sources, so no stale build/ folder of the checkout leaks into it, and installed with `--no-deps`
into a fresh venv in a temp folder. That venv gets the dependencies from this one through a .pth
line naming this venv's site-packages (no 1 GB download): a path line only extends sys.path, the
.pth files inside that folder (the editable install's import hook) are not run, so the checkout's
bert_jax stays invisible, which test_the_installed_package_is_the_wheel checks.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
WIKIGOLD = REPO / "tests" / "data" / "wikigold.conll.txt"
PACKAGE_FILES = ("bert_jax/configs/__init__.py", "bert_jax/configs/common.py",
                 "bert_jax/configs/pretrain.py", "bert_jax/configs/finetune.py",
                 "bert_jax/resources/bert-base-uncased-vocab.txt",
                 "bert_jax/resources/web-bible.en.txt.gz", "bert_jax/cli/__init__.py",
                 "bert_jax/kernels/onednn_matmul.cc", "bert_jax/kernels/adamw.cc",
                 "bert_jax/kernels/attention.cc", "bert_jax/kernels/softmax_dropout.cc",
                 "bert_jax/kernels/pool.h", "bert_jax/kernels/exp.h")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("wheel")
  src = root / "src"
  shutil.copytree(REPO / "bert_jax", src / "bert_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  for name in ("setup.py", "pyproject.toml", "README.md"):
    shutil.copy2(REPO / name, src / name)
  p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                      "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  (path,) = (root / "dist").glob("bert_jax-*.whl")
  return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh venv with the wheel installed and this venv's packages as its dependencies."""
  root = tmp_path_factory.mktemp("venv") / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                 timeout=120)
  python = root / "bin" / "python"
  # Installed before the .pth exists, and without PYTHONPATH (CI may name the checkout there,
  # whose bert_jax.egg-info pip would take for an installed bert_jax and skip the wheel).
  p = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                      "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                     capture_output=True, text=True, timeout=300, env=clean_env())
  assert p.returncode == 0, p.stderr[-3000:]
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  pathlib.Path(site, "bert_jax_test_dependencies.pth").write_text(
      sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
  return root


@pytest.fixture
def elsewhere(tmp_path) -> pathlib.Path:
  """A working directory with no configs/ nor bert_jax/ in it."""
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  return cwd


def clean_env() -> dict[str, str]:
  """This environment without the variables that would show the checkout to another Python."""
  return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}


def run_in(venv, cwd, program, *args, timeout=300):
  env = clean_env()
  env.update(JAX_PLATFORMS="cpu", VIRTUAL_ENV=str(venv))
  return subprocess.run([str(venv / "bin" / program), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_the_configs_and_resources(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  missing = [n for n in PACKAGE_FILES if n not in names]
  assert not missing, missing
  assert all(n.startswith(("bert_jax/", "bert_jax-")) for n in names), sorted(names)[:20]


def test_the_installed_package_is_the_wheel(venv, elsewhere):
  p = run_in(venv, elsewhere, "python", "-c",
             "import bert_jax, bert_jax.configs.common as c; print(bert_jax.__file__); "
             "print(c.__file__)")
  assert p.returncode == 0, p.stderr[-3000:]
  files = p.stdout.split()
  assert len(files) == 2 and all(f.startswith(str(venv)) for f in files), (files, str(venv))


def test_tiny_pretraining_from_another_directory(venv, elsewhere, pretrain_dataset):
  workdir = elsewhere / "run"
  p = run_in(venv, elsewhere, "bert-jax-pretrain", "--config=bert_jax/configs/pretrain.py:tiny",
             f"--workdir={workdir}", f"--config.data.dir={pretrain_dataset}")
  assert p.returncode == 0, p.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["step"] == 2
  assert (workdir / "model" / "bert_config.json").is_file()
  assert not (elsewhere / "bert_jax").exists()


def test_finetune_config_loads_from_another_directory(venv, elsewhere):
  # The tiny NER config from the package, checked by the fine-tuning run itself: it reads the
  # config's train_file and refuses the missing one (one line, exit 2) before any training.
  missing = elsewhere / "no-such-train.conll"
  p = run_in(venv, elsewhere, "bert-jax-finetune", "--config=configs/finetune.py:task=ner,tiny",
             f"--workdir={elsewhere / 'run'}", f"--config.data.train_file={missing}")
  assert p.returncode == 2, p.stderr[-3000:]
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and str(missing) in errors[0], p.stderr[-3000:]
  assert "Traceback" not in p.stderr


def test_convert_help_lists_its_flags(venv, elsewhere):
  p = run_in(venv, elsewhere, "bert-jax-convert", "--help", timeout=120)
  assert p.returncode in (0, 1), p.stderr[-3000:]  # absl's --help exits with 1
  assert "Traceback" not in p.stderr
  assert "--src: bert_jax directory, Hugging Face folder" in p.stdout, p.stdout[-3000:]
  assert "--dst: Output directory" in p.stdout, p.stdout[-3000:]
