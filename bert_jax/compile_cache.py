"""A persistent XLA compilation cache for the bert_jax commands, on by default.

A fine-tuning run compiles its train and eval steps once per length bucket (six widths on the
polarity data: ~17 s of a 56 s MiniLM epoch on a 2-core CPU), and a pretraining run its step and
evaluation; the same command run again (a resumed run, the next seed or learning rate of a
sweep) compiles exactly the same programs. JAX keys each entry on the program, the compile
options, the backend and the jax/jaxlib versions, so a hit is the executable the compile would
have produced. MaxText does the same (its `jax_cache_dir`).

Where: $BERT_JAX_COMPILATION_CACHE (a directory, or `off`), else JAX's own
JAX_COMPILATION_CACHE_DIR if set (left to JAX), else $XDG_CACHE_HOME/bert_jax/xla
(~/.cache/bert_jax/xla). Size: at most MAX_BYTES, least recently used entries removed first.
"""
from __future__ import annotations

import os

ENV = "BERT_JAX_COMPILATION_CACHE"
MAX_BYTES = 4 << 30
MIN_COMPILE_SECONDS = 1.0  # JAX's default: programs that compile faster are not worth a file


def cache_root(environ=os.environ) -> str:
  """$XDG_CACHE_HOME/bert_jax (~/.cache/bert_jax): bert_jax's per-user caches live under it."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bert_jax")


def default_dir(environ=os.environ) -> str:
  return os.path.join(cache_root(environ), "xla")


def choose(environ=os.environ) -> str | None:
  """The directory to use, or None to leave JAX's settings as they are."""
  choice = environ.get(ENV, "").strip()
  if choice.lower() == "off" or (not choice and environ.get("JAX_COMPILATION_CACHE_DIR")):
    return None
  return choice or default_dir(environ)


def enable(environ=os.environ) -> str | None:
  """Turns the cache on for this process (before its first compile); returns the directory."""
  path = choose(environ)
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # a read-only home: compile every time, as without the cache
  if not os.access(path, os.W_OK):
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
