"""tpu_compiler: libtpu from a cache folder outside the venv, only inside the AOT process, quietly.

The cache folder is the one tests/test_aot.py fills (~/.cache/bert_jax/libtpu-VERSION); the test
that loads it skips when it is not there.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from bert_jax import errors, tpu_compiler


def test_accelerator_type_of_a_topology():
  assert tpu_compiler.accelerator_type("v5e:16x16") == "v5litepod-256"
  assert tpu_compiler.accelerator_type("v4:2x2x4") == "v4-32"  # v4 counts TensorCores
  assert tpu_compiler.accelerator_type("v5p:4x4x4") == "v5p-128"
  assert tpu_compiler.accelerator_type("v6e:4x4") == "v6e-16"
  assert tpu_compiler.accelerator_type("v9:2x2") == tpu_compiler.accelerator_type("v5e") == ""


def test_cache_dir_is_per_version_and_outside_the_venv(monkeypatch):
  monkeypatch.delenv("BERT_JAX_LIBTPU_DIR", raising=False)
  folder = tpu_compiler.cache_dir()
  assert tpu_compiler.requirement().startswith("libtpu")
  assert os.path.basename(folder).startswith("libtpu")
  assert not folder.startswith(sys.prefix)
  monkeypatch.setenv("BERT_JAX_LIBTPU_DIR", "/somewhere/else")
  assert tpu_compiler.cache_dir() == "/somewhere/else"
  assert "--target /somewhere/else" in tpu_compiler.install_command()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None,
                    reason="libtpu is installed in this venv")
def test_missing_compiler_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setenv("BERT_JAX_LIBTPU_DIR", str(tmp_path / "none"))
  with pytest.raises(errors.UserError) as e:
    tpu_compiler.make_importable("v5e:2x2")
  assert isinstance(e.value, RuntimeError)
  assert f"pip install --no-deps --target {tmp_path / 'none'} libtpu" in str(e.value).replace(
      "'", "")
  assert str(tmp_path / "none") not in sys.path


_LOAD = r"""
import importlib.util, sys
import jax
from bert_jax import tpu_compiler
assert importlib.util.find_spec("libtpu") is None  # not in the venv: other processes stay quiet
where = tpu_compiler.make_importable(sys.argv[1])
from jax.experimental import topologies
devices = topologies.get_topology_desc(sys.argv[1], "tpu").devices
print(where, len(devices), devices[0].device_kind, jax.default_backend())
"""


def test_topology_from_the_cache_without_start_up_noise(monkeypatch):
  monkeypatch.delenv("BERT_JAX_LIBTPU_DIR", raising=False)
  if importlib.util.find_spec("libtpu") is not None:
    pytest.skip("libtpu is installed in this venv")
  if not os.path.isdir(os.path.join(tpu_compiler.cache_dir(), "libtpu")):
    pytest.skip(f"no libtpu in {tpu_compiler.cache_dir()} (tests/test_aot.py installs it)")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("TPU_") and k not in ("JAX_PLATFORMS", "PYTHONPATH", "XLA_FLAGS")}
  p = subprocess.run([sys.executable, "-c", _LOAD, "v5e:2x2"], env=env, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.split() == [tpu_compiler.cache_dir(), "4", "TPU", "v5", "lite", "cpu"]
  noise = [l for l in p.stderr.splitlines() if "TPU" in l or "WARNING" in l or "E0000" in l]
  assert not noise, p.stderr[-2000:]
