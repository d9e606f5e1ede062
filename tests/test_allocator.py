"""The host allocator restart (bert_jax/allocator.py): the choice, and a real restarted CLI."""
import json
import os
import subprocess
import sys

import pytest

from bert_jax import allocator
from bert_jax.errors import ConfigError
from tests.conftest import REPO

TC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_plan_prefers_tcmalloc_then_hugepages_and_respects_what_is_set():
  assert allocator.plan({}, TC) == {"LD_PRELOAD": TC, allocator.APPLIED: "tcmalloc"}
  assert allocator.plan({"LD_PRELOAD": "/x/libfoo.so"}, TC)["LD_PRELOAD"] == f"{TC}:/x/libfoo.so"
  assert allocator.plan({}, None) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                                      allocator.APPLIED: "hugepages"}
  assert allocator.plan({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None)["GLIBC_TUNABLES"] == (
      "glibc.pthread.rseq=0:glibc.malloc.hugetlb=1")
  assert allocator.plan({allocator.ENV: "hugepages"}, TC)[allocator.APPLIED] == "hugepages"
  # Left alone: asked to, already restarted, or an allocator / the tunable already chosen.
  assert allocator.plan({allocator.ENV: "system"}, TC) is None
  assert allocator.plan({allocator.APPLIED: "tcmalloc"}, TC) is None
  assert allocator.plan({"LD_PRELOAD": "/opt/libjemalloc.so.2"}, TC) is None
  assert allocator.plan({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None) is None


def test_in_use_names_the_applied_or_hand_preloaded_allocator():
  assert allocator.in_use({}) == "system"
  assert allocator.in_use({allocator.APPLIED: "hugepages"}) == "hugepages"
  tc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
  assert allocator.in_use({"LD_PRELOAD": tc}) == "tcmalloc"  # preloaded by hand: no restart
  assert allocator.plan({"LD_PRELOAD": tc}, tc) is None


def test_plan_refuses_an_unknown_choice_and_a_missing_tcmalloc():
  with pytest.raises(ConfigError, match="BERT_JAX_ALLOCATOR='tcmaloc' is not one of"):
    allocator.plan({allocator.ENV: "tcmaloc"}, TC)
  with pytest.raises(ConfigError, match="apt-get install libtcmalloc-minimal4"):
    allocator.plan({allocator.ENV: "tcmalloc"}, None)
  assert allocator.find_tcmalloc(dirs=[str(REPO)]) is None


PROBE = ("import json, os; from bert_jax import allocator; allocator.reexec(); "
         "maps = open('/proc/self/maps').read(); "
         "print(json.dumps({'applied': os.environ.get(allocator.APPLIED), "
         "'tcmalloc_mapped': 'tcmalloc' in maps, 'pid': os.getpid(), "
         "'tunables': os.environ.get('GLIBC_TUNABLES', '')}))")


def _env(choice):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env[allocator.ENV] = choice
  env.pop(allocator.APPLIED, None)
  return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the restart is Linux-only")
def test_the_process_restarts_once_with_the_chosen_allocator():
  out = subprocess.run([sys.executable, "-c", PROBE], env=_env("auto"), capture_output=True,
                       text=True, timeout=120, check=True)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  if allocator.find_tcmalloc():
    assert got["applied"] == "tcmalloc" and got["tcmalloc_mapped"], got
  else:  # CI: no libtcmalloc installed
    assert got["applied"] == "hugepages" and "glibc.malloc.hugetlb=1" in got["tunables"], got
    assert not got["tcmalloc_mapped"]
  # system: no restart, nothing changed.
  out = subprocess.run([sys.executable, "-c", PROBE], env=_env("system"), capture_output=True,
                       text=True, timeout=120, check=True)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["applied"] is None and not got["tcmalloc_mapped"]


def test_a_cli_with_a_bad_choice_says_so_in_one_line():
  out = subprocess.run([sys.executable, "-m", "bert_jax.cli.vocab", "--help"],
                       env=_env("fast"), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: BERT_JAX_ALLOCATOR='fast' is not one of auto, tcmalloc, hugepages, system; unset "
      "it for the default (auto)."]
