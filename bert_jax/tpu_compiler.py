"""libtpu (the TPU compiler) for compiling on a machine without a TPU, kept out of the venv.

Installed in a venv, libtpu makes every JAX process there try to start a TPU and print
initialisation errors on a CPU machine. `bert-jax-aot` only needs it to compile, so it is
installed once into a cache folder outside the venv:

  python -m pip install --no-deps --target ~/.cache/bert_jax/libtpu-0.0.42 'libtpu==0.0.42.*'

(`BERT_JAX_LIBTPU_DIR` overrides the folder; `install_command()` prints the command for the
installed jax) and put on `sys.path` only inside the AOT process, by `make_importable`. On a TPU
VM, `pip install 'bert_jax[tpu]'` installs libtpu in the venv as usual and that one is used.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import sys

from bert_jax.errors import UserError


class CompilerMissingError(UserError, RuntimeError):
  """libtpu, the TPU compiler, is neither installed nor in the cache folder."""


def requirement() -> str:
  """The libtpu that `jax[tpu]` pins for the installed jax, e.g. 'libtpu==0.0.42.*'."""
  for req in importlib.metadata.requires("jax") or []:
    name, _, marker = req.partition(";")
    if name.strip().startswith("libtpu") and "tpu" in marker:
      return name.strip().replace(" ", "")
  return "libtpu"


def cache_dir() -> str:
  """The folder libtpu is installed into outside the venv, one per libtpu version."""
  override = os.environ.get("BERT_JAX_LIBTPU_DIR")
  if override:
    return override
  slug = re.sub(r"[^A-Za-z0-9.]+", "-", requirement()).strip("-.")  # libtpu-0.0.42
  return os.path.join(os.path.expanduser("~"), ".cache", "bert_jax", slug)


def install_command() -> str:
  """The shell command that installs libtpu into `cache_dir()`."""
  return shlex.join([sys.executable, "-m", "pip", "install", "--no-deps", "--target",
                     cache_dir(), requirement()])


# Cloud TPU names of a slice by generation: v4 and v5p count TensorCores (2 per chip).
_ACCELERATOR_NAMES = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5e": ("v5litepod", 1),
                      "v6e": ("v6e", 1)}


def accelerator_type(topology: str) -> str:
  """'v5e:2x2' -> 'v5litepod-4', 'v4:2x2x4' -> 'v4-32'; '' for a name it does not know."""
  generation, _, dims = topology.lower().partition(":")
  if generation not in _ACCELERATOR_NAMES or not re.fullmatch(r"\d+(x\d+)*", dims):
    return ""
  chips = 1
  for d in dims.split("x"):
    chips *= int(d)
  name, cores_per_chip = _ACCELERATOR_NAMES[generation]
  return f"{name}-{chips * cores_per_chip}"


def make_importable(topology: str = "") -> str:
  """Makes `import libtpu` work in this process: the installed one, else the cache folder's.

  With the cache folder this is a compile-only process on a machine without a TPU: JAX stays on
  CPU (unless JAX_PLATFORMS says otherwise) and libtpu is told it has one host of `topology`'s
  kind and no metadata server, so it neither tries to start a TPU nor prints start-up errors.

  Returns:
    Where libtpu comes from: "installed" or the cache folder.
  Raises:
    CompilerMissingError: with the command that installs it.
  """
  if importlib.util.find_spec("libtpu") is not None:
    return "installed"
  folder = cache_dir()
  if not os.path.isdir(os.path.join(folder, "libtpu")):
    raise CompilerMissingError(
        f"The TPU compiler (libtpu) is not installed. Install it outside the venv, where other "
        f"JAX processes will not try to start a TPU with it: `{install_command()}` (on a TPU "
        f"VM: pip install 'bert_jax[tpu]').")
  if folder not in sys.path:
    sys.path.append(folder)
    importlib.invalidate_caches()
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # No GCE metadata server to ask.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  if accelerator_type(topology):
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topology))
  if not os.environ.get("JAX_PLATFORMS"):
    import jax
    jax.config.update("jax_platforms", "cpu")
  return folder
