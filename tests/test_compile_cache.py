"""The persistent compilation cache of the bert_jax commands (bert_jax/compile_cache.py)."""
import os
import subprocess
import sys
import time

from bert_jax import compile_cache
from tests.conftest import REPO


def test_choice_of_directory():
  home = {"HOME": "/h"}
  assert compile_cache.choose({"XDG_CACHE_HOME": "/c"}) == "/c/bert_jax/xla"
  assert compile_cache.choose({**home, compile_cache.ENV: "/x"}) == "/x"
  assert compile_cache.choose({compile_cache.ENV: "off"}) is None
  # JAX's own variable wins (JAX reads it itself); ours still overrides it when given.
  assert compile_cache.choose({"JAX_COMPILATION_CACHE_DIR": "/j"}) is None
  assert compile_cache.choose({"JAX_COMPILATION_CACHE_DIR": "/j", compile_cache.ENV: "/x"}) == "/x"


def test_unwritable_directory_leaves_the_cache_off(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert compile_cache.enable({compile_cache.ENV: str(blocker / "xla")}) is None


PROBE = """
import time, jax, jax.numpy as jnp
from bert_jax import compile_cache
print(compile_cache.enable())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
def f(x):
  for _ in range(40):
    x = jnp.tanh(x @ x.T) + jnp.cos(x)
  return x
jax.block_until_ready(jax.jit(f)(jnp.ones((64, 64))))
"""


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["XDG_CACHE_HOME"] = str(tmp_path)
  cache = tmp_path / "bert_jax" / "xla"

  def run():
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == str(cache)

  run()
  [entry] = cache.glob("jit_f-*-cache")
  [atime] = cache.glob("jit_f-*-atime")
  written, first_read = entry.stat().st_mtime_ns, atime.read_bytes()
  time.sleep(0.01)
  run()
  # The second process used the entry (JAX stamps its last access) and did not write a new one.
  assert atime.read_bytes() != first_read
  assert entry.stat().st_mtime_ns == written
  assert [p.name for p in cache.glob("jit_f-*-cache")] == [entry.name]
