"""bert_jax.aot: the real train step compiled for TPU topologies on this CPU machine.

libtpu (at the version jax pins) is installed once with `pip install --no-deps --target` into
tpu_compiler's cache directory outside the venv, as users do for bert-jax-aot, and put on
PYTHONPATH of the subprocesses only: installed in the shared venv it would make every JAX
process of the suite print TPU start-up warnings. Tests skip with the reason when it cannot be
installed.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from bert_jax import tpu_compiler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group("aot")


@pytest.fixture(scope="module")
def libtpu_env():
  """Environment for subprocesses that can compile for TPU."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if importlib.util.find_spec("libtpu") is not None:
    return env
  # The requirement and the folder bert_jax.aot itself reads libtpu from.
  req, target = tpu_compiler.requirement(), tpu_compiler.cache_dir()
  if not os.path.isdir(os.path.join(target, "libtpu")):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".libtpu-", dir=os.path.dirname(target))
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        tmp, req], capture_output=True, text=True)
    if p.returncode != 0:
      pytest.skip(f"{req} could not be installed ({p.stderr.strip().splitlines()[-1:]}); "
                  f"the AOT tests need it ({tpu_compiler.install_command()}).")
    try:
      os.rename(tmp, target)
    except OSError:  # Another worker installed it first.
      pass
  env["PYTHONPATH"] = os.pathsep.join([target, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return env


_COMPILE = r"""
import json, sys
import jax
from flax import nnx
from bert_jax import aot, sharding
from bert_jax.heads import BertForPreTraining
from bert_jax.pretraining import bert_config_from
sys.path.insert(0, "configs")
import pretrain

topology, data, fsdp, tensor = sys.argv[1], *map(int, sys.argv[2:5])
config = pretrain.get_config("tiny")
config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
setup = aot.prepare(config, topology)
compiled = aot.compile_step(setup)
report = aot.report_of(setup, compiled, 0.4)

# What sharding.py asks for, computed here from the model's logical axes, not through aot/train.
model = nnx.eval_shape(lambda: BertForPreTraining(bert_config_from(config.model, 30522),
                                                  rngs=nnx.Rngs(0)))
want = sharding.named_shardings(nnx.split(model)[1], setup.mesh).to_pure_dict()
(state_in, batch_in, _), _ = compiled.input_shardings
got = state_in.params
rows = []
for (path, w), g, x in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got),
                           jax.tree.leaves(setup.abstract.params), strict=True):
  rows.append({"name": jax.tree_util.keystr(path), "want": str(w.spec), "got": str(g.spec),
               "equal": bool(g.is_equivalent_to(w, len(x.shape)))})
batch_ok = all(batch_in[k].is_equivalent_to(sharding.batch_sharding(setup.mesh, x.ndim), x.ndim)
               for k, x in setup.batch.items())
print(json.dumps({"report": report, "params": rows, "batch_ok": batch_ok}))
"""


@pytest.mark.parametrize("topology,mesh", [("v5e:2x2", (1, 2, 2)), ("v4:2x2x1", (2, 1, 2))])
def test_tiny_train_step_compiles_for_tpu(libtpu_env, topology, mesh):
  p = subprocess.run([sys.executable, "-c", _COMPILE, topology, *map(str, mesh)], cwd=ROOT,
                     env=libtpu_env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  r, m = out["report"], out["report"]["memory"]
  assert r["chips"] == 4 and r["device_kind"].startswith("TPU")
  assert r["mesh"] == dict(zip(("data", "fsdp", "tensor"), mesh, strict=True))
  for k in ("argument_bytes", "output_bytes", "total_bytes", "params_bytes"):
    assert 0 < m[k] < m["hbm_bytes"], k
  # XLA:TPU may place every temporary of this tiny step in aliased/output buffers (0 bytes on
  # v5e (1,2,2) once the D x D kernels were replicated); it is never negative or above HBM.
  assert 0 <= m["temp_bytes"] < m["hbm_bytes"]
  assert m["total_bytes"] >= m["params_bytes"] + m["optimizer_bytes"]
  assert m["hbm_bytes"] == {"v5e": 16, "v4": 32}[r["chip"]] * 2**30
  assert m["alias_bytes"] > 0  # The donated state is updated in place.
  # Parameter shardings in the compiled program are exactly what sharding.py asked for ...
  bad = [row for row in out["params"] if not row["equal"]]
  assert not bad, bad[:5]
  assert r["param_shardings_as_requested"]
  # ... and they do shard: some parameters over tensor (and fsdp where the mesh has it).
  specs = " ".join(row["got"] for row in out["params"])
  assert "tensor" in specs
  assert "fsdp" in specs or mesh[1] == 1
  assert m["params_bytes"] < 4 * r["model"]["params"]  # Less than a full f32 replica per chip.
  assert out["batch_ok"]  # Batch rows split over data x fsdp, as train.to_global puts them.
  assert r["per_chip_batch"] == 8 // (mesh[0] * mesh[1])
  assert r["collectives"]["all-reduce"]["count"] > 0  # Gradients are reduced across replicas.
  if mesh[1] > 1:  # fsdp: gradients of fsdp-sharded kernels are reduce-scattered, not all-reduced.
    assert r["collectives"]["reduce-scatter"]["count"] > 0, r["collectives"]
  assert r["indivisible_dims"] == []  # tensor=2 divides the vocabulary, heads and FFN.
  assert r["flops"]["xla_per_chip"] > 0 and r["flops"]["analytic_per_chip"] > 0
  assert r["tokens_per_s_per_chip"]["peak"] > r["tokens_per_s_per_chip"]["at_mfu"] > 0


def test_too_large_per_chip_batch_is_refused_before_compiling(libtpu_env):
  t0 = time.time()
  p = subprocess.run([sys.executable, "-m", "bert_jax.cli.aot", "--config=configs/pretrain.py:tiny",
                      "--topology=v5e:2x2", "--batch_per_chip=65536"], cwd=ROOT, env=libtpu_env,
                     capture_output=True, text=True, timeout=600)
  elapsed = time.time() - t0
  assert p.returncode == 1, p.stderr[-2000:]
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  msg = errors[0]
  assert "does not fit" in msg and "before compiling" in msg and "16.0 GiB" in msg
  assert "per-chip batch from 65536" in msg and "remat" in msg
  assert p.stdout == ""
  assert elapsed < 60, elapsed  # No compile (the tiny compile alone takes ~10 s here).


def test_unknown_topology_is_one_sentence(libtpu_env):
  p = subprocess.run([sys.executable, "-m", "bert_jax.cli.aot", "--config=configs/pretrain.py:tiny",
                      "--topology=v9:2x2"], cwd=ROOT, env=libtpu_env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 2
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "v9:2x2" in errors[0] and "Traceback" not in p.stderr


def test_collectives_counts_async_starts_once():
  from bert_jax import aot
  hlo = "\n".join([
      "  %ar = f32[768,3072]{1,0} all-reduce(f32[768,3072]{1,0} %g), replica_groups={{0,1}}",
      "  %ags = (bf16[8,4]{1,0}, bf16[16,4]{1,0}) all-gather-start(bf16[8,4]{1,0} %p)",
      "  %agd = bf16[16,4]{1,0} all-gather-done((bf16[8,4]{1,0}, bf16[16,4]{1,0}) %ags)",
      "  %cp = s32[2]{0} collective-permute(s32[2]{0} %x), source_target_pairs={{0,1}}",
      "  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)",
  ])
  c = aot.collectives(hlo)
  assert c["all-reduce"] == {"count": 1, "bytes": 768 * 3072 * 4}
  assert c["all-gather"] == {"count": 1, "bytes": 16 * 4 * 2}
  assert c["collective-permute"]["count"] == 1
  assert c["reduce-scatter"]["count"] == c["all-to-all"]["count"] == 0


def test_collectives_count_a_fused_tpu_reduce_scatter_once():
  from bert_jax import aot
  hlo = "\n".join([
      "%all-reduce-scatter.4 (input_0: f32[32,16]) -> f32[8,16] {",
      "  %all-reduce.86 = f32[32,16]{1,0} all-reduce(f32[32,16]{1,0} %input_0), to_apply=%add",
      "  ROOT %dynamic-slice.1 = f32[8,16]{1,0} dynamic-slice(%all-reduce.86, %p, %z)",
      "}",
      "",
      "ENTRY %main.1 (p: f32[32,16]) -> f32[8,16] {",
      "  %fusion.348 = f32[8,16]{1,0} fusion(%p), kind=kCustom, calls=%all-reduce-scatter.4",
      "  ROOT %ar = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add",
      "}",
  ])
  c = aot.collectives(hlo)
  assert c["reduce-scatter"] == {"count": 1, "bytes": 8 * 16 * 4}
  assert c["all-reduce"] == {"count": 1, "bytes": 4 * 4}
