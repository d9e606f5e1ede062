"""sharding.py on 8 simulated CPU devices: the spec of every parameter of a tiny BertForPreTraining
on a (data, fsdp, tensor) = (2, 2, 2) mesh, the optimizer state sharded like the parameters,
indivisible dimensions reported, `mesh.rules` overrides, and the activation constraint.

One subprocess (it needs its own device count) computes everything; the tests read its JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

_PROBE = r"""
import json, logging, sys
import jax, numpy as np
from flax import nnx
from ml_collections import config_flags
from absl import flags
from bert_jax import optim, pretraining, sharding, train
from bert_jax.tokenization import Tokenizer

bible, vocab, config_path = sys.argv[1:4]
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")


config_flags.DEFINE_config_file("config", lock_config=True)


def load_config(*overrides):
  # The tiny pretraining config; overrides are parsed as the CLIs parse them.
  if not overrides:
    return config_flags.config_flags._LoadConfigModule("pretrain", config_path).get_config("tiny")
  sys.argv = ["probe", f"--config={config_path}:tiny", *overrides]  # config_flags reads sys.argv.
  flags.FLAGS(sys.argv)
  return flags.FLAGS.config


def specs(config, sizes):
  config.mesh.update(sizes)
  mesh = sharding.make_mesh(dict(config.mesh))
  task = pretraining.model_task(config, 30522)
  tx, _ = optim.create_optimizer(config.optimizer, 10)
  with sharding.use_rules(sharding.rules_of(config.mesh)):
    _, abstract, shardings = train.abstract_train_state(task, tx, mesh)
  name = lambda path: ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                              for k in path)
  flat = lambda tree: {name(p): str(tuple(s.spec))
                       for p, s in jax.tree_util.tree_leaves_with_path(tree)}
  return flat(shardings.params), flat(shardings.opt_state)


out = {}
mesh222 = dict(data=2, fsdp=2, tensor=2)
out["params"], out["opt_state"] = specs(load_config(), mesh222)
override = ("--config.mesh.rules=(('batch', ('data', 'fsdp')), ('vocab', None), ('embed', None), "
            "('mlp', 'fsdp'), ('heads', 'tensor'))")
out["override_params"], _ = specs(load_config(override), mesh222)
print("--- tensor=8", file=sys.stderr, flush=True)
out["indivisible"] = sharding.indivisible(
    nnx.split(nnx.eval_shape(lambda: pretraining.model_task(load_config(), 30522).model_factory(
        nnx.Rngs(0))))[1], sharding.make_mesh(dict(data=1, fsdp=1, tensor=8)))
for _ in range(2):  # The warnings are logged once, not once per call.
  specs(load_config(), dict(data=1, fsdp=1, tensor=8))

# The activation constraint: present under a mesh, and the same numbers as without one.
config = load_config()
task = pretraining.model_task(config, 30522)
model = task.model_factory(nnx.Rngs(params=3))
tok = Tokenizer.from_vocab(vocab)
lines = [l for l in open(bible, encoding="utf-8").read().splitlines() if len(l.split()) > 4]
enc = tok(lines[100:108], max_length=32)
graphdef, state = nnx.split(model)
forward = lambda s, e: nnx.merge(graphdef, s)(e["input_ids"], e["attention_mask"],
                                              e["token_type_ids"])
plain = jax.jit(forward)(state, enc)
mesh = sharding.make_mesh(mesh222)
with jax.set_mesh(mesh):
  lowered = jax.jit(forward).lower(state, enc).as_text()
  sharded = jax.jit(forward)(state, enc)
out["constraints"] = lowered.count("sharding_constraint")
out["max_diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                      for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)))
print(json.dumps(out))
"""

# Every parameter of BertForPreTraining (1 layer, hidden 32, 2 heads, FFN 64, vocab 30,522) on
# (data, fsdp, tensor) = (2, 2, 2) with sharding.DEFAULT_RULES.
GOLDEN = {
    "bert.embeddings.LayerNorm.bias": "('fsdp',)",
    "bert.embeddings.LayerNorm.scale": "('fsdp',)",
    "bert.embeddings.position_embeddings.embedding": "(None, 'fsdp')",
    "bert.embeddings.token_type_embeddings.embedding": "(None, 'fsdp')",
    "bert.embeddings.word_embeddings.embedding": "('tensor', 'fsdp')",
    "bert.encoder.layer.0.attention.output.LayerNorm.bias": "('fsdp',)",
    "bert.encoder.layer.0.attention.output.LayerNorm.scale": "('fsdp',)",
    "bert.encoder.layer.0.attention.output.dense.bias": "('fsdp',)",
    "bert.encoder.layer.0.attention.output.dense.kernel": "('tensor', None, 'fsdp')",
    "bert.encoder.layer.0.attention.self.key.bias": "('tensor', None)",
    "bert.encoder.layer.0.attention.self.key.kernel": "('fsdp', 'tensor', None)",
    "bert.encoder.layer.0.attention.self.query.bias": "('tensor', None)",
    "bert.encoder.layer.0.attention.self.query.kernel": "('fsdp', 'tensor', None)",
    "bert.encoder.layer.0.attention.self.value.bias": "('tensor', None)",
    "bert.encoder.layer.0.attention.self.value.kernel": "('fsdp', 'tensor', None)",
    "bert.encoder.layer.0.intermediate.dense.bias": "('tensor',)",
    "bert.encoder.layer.0.intermediate.dense.kernel": "('fsdp', 'tensor')",
    "bert.encoder.layer.0.output.LayerNorm.bias": "('fsdp',)",
    "bert.encoder.layer.0.output.LayerNorm.scale": "('fsdp',)",
    "bert.encoder.layer.0.output.dense.bias": "('fsdp',)",
    "bert.encoder.layer.0.output.dense.kernel": "('tensor', 'fsdp')",
    "bert.pooler.dense.bias": "(None,)",
    "bert.pooler.dense.kernel": "('fsdp', None)",
    "predictions.bias": "('tensor',)",
    "predictions.transform.LayerNorm.bias": "(None,)",
    "predictions.transform.LayerNorm.scale": "(None,)",
    "predictions.transform.dense.bias": "(None,)",
    "predictions.transform.dense.kernel": "('fsdp', None)",
    "seq_relationship.bias": "(None,)",
    "seq_relationship.kernel": "('fsdp', None)",
}


@pytest.fixture(scope="module")
def probe(bible_path, vocab_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  p = subprocess.run([sys.executable, "-c", _PROBE, str(bible_path), str(vocab_path),
                      str(REPO / "bert_jax" / "configs" / "pretrain.py")],
                     env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  out["stderr"] = p.stderr
  return out


def test_every_parameter_has_its_expected_spec(probe):
  got = probe["params"]
  assert got == GOLDEN


def test_optimizer_state_is_sharded_like_the_parameters(probe):
  params = probe["params"]
  moments = {}
  for name, v in probe["opt_state"].items():
    for moment in (".mu.", ".nu."):  # AdamW's first and second moments, one per parameter.
      if moment in name:
        moments.setdefault(moment, {})[name.split(moment, 1)[1]] = v
  assert set(moments) == {".mu.", ".nu."}
  assert moments[".mu."] == params and moments[".nu."] == params
  others = [v for k, v in probe["opt_state"].items() if ".mu." not in k and ".nu." not in k]
  assert others and set(others) == {"()"}  # Step counts are replicated.


def test_indivisible_dimensions_are_reported_once(probe):
  rows = {(r["param"], r["dim"]): r for r in probe["indivisible"]}
  word = rows[("bert.embeddings.word_embeddings.embedding", 0)]
  assert word == {"param": "bert.embeddings.word_embeddings.embedding", "dim": 0, "size": 30522,
                  "mesh_axes": ["tensor"], "mesh_size": 8}
  assert ("predictions.bias", 0) in rows
  assert ("bert.encoder.layer.0.attention.self.query.kernel", 1) in rows  # 2 heads over 8.
  warnings = probe["stderr"].split("--- tensor=8", 1)[1].splitlines()
  word_warnings = [l for l in warnings if "word_embeddings.embedding dimension 0 (size 30522)" in l]
  assert len(word_warnings) == 1, warnings
  assert "mesh axis tensor (size 8)" in word_warnings[0] and "replicated" in word_warnings[0]


def test_mesh_rules_override_changes_the_shardings(probe):
  got = probe["override_params"]
  assert got["bert.embeddings.word_embeddings.embedding"] == "(None, None)"
  assert got["bert.encoder.layer.0.intermediate.dense.kernel"] == "(None, 'fsdp')"
  assert got["bert.encoder.layer.0.attention.self.query.kernel"] == "(None, 'tensor', None)"
  assert got != probe["params"]


def test_activations_are_constrained_without_changing_the_numbers(probe):
  assert probe["constraints"] >= 2  # After the embeddings and after the one layer.
  assert probe["max_diff"] <= 1e-6


def test_rules_from_a_config_read_back_from_json_and_bad_rules():
  from bert_jax import sharding
  from bert_jax.errors import ConfigError
  as_json = json.loads(json.dumps(sharding.DEFAULT_RULES))  # Tuples come back as lists.
  assert sharding.normalize_rules(as_json) == sharding.DEFAULT_RULES
  assert sharding.rules_of({"data": -1}) == sharding.DEFAULT_RULES
  with pytest.raises(ConfigError, match="not a mesh axis"):
    sharding.normalize_rules([("embed", "model")])
  with pytest.raises(ConfigError, match="pair"):
    sharding.normalize_rules(["embed"])

