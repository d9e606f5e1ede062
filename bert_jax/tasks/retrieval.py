"""Sentence-embedding / retrieval fine-tuning: contrastive training on (query, positive[,
hard negatives]) pairs, evaluated by exact search over a BEIR-layout corpus.

Data: `data.train_file` (JSONL / CSV / TSV pairs, see retrieval_data.py) and `data.dev_dir` (a
BEIR folder: corpus.jsonl, queries.jsonl, qrels/`data.dev_split`.tsv). Loss: in-batch-negatives
InfoNCE over the global batch (contrastive.py) with a fixed or learnable scale, optional
symmetric term, `data.num_hard_negatives` hard negatives per example, Matryoshka dimensions and
GradCache chunks (`retrieval.*`). Evaluation: every query against the whole corpus, exact (a
brute-force matrix product and top-k on the device): recall@1, recall@10, mrr@10, ndcg@10.

WORKDIR/best is a sentence-transformers folder (modules.json, 1_Pooling/config.json,
sentence_bert_config.json, HF BERT or ModernBERT weights) that both
`sentence_transformers.SentenceTransformer(path)` and bert_jax (`bert-jax-embed`) load.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bert_jax import contrastive, inference, retrieval_data
from bert_jax import metrics as metrics_lib
from bert_jax.errors import ConfigError, DataError
from bert_jax.tasks import common

POOLINGS = ("mean", "cls", "lasttoken")
METRICS = ("ndcg@10", "recall@1", "recall@10", "mrr@10")
MAX_SCALE = 100.0  # A learnable scale is clipped here, as CLIP does.


class SentenceEncoder(nnx.Module):
  """An encoder (BERT's under `bert`, ModernBERT's under `model`, as the head models keep it)
  with sentence-transformers' pooling, and the learnable log-scale of the loss if asked."""

  def __init__(self, config, *, rngs: nnx.Rngs, pooling: str = "mean",
               learnable_scale: float = 0.0):
    from bert_jax import family
    self.config, self.pooling = config, pooling
    if family.of_config(config) == "bert":
      from bert_jax import modeling
      self.bert = modeling.BertModel(config, rngs=rngs)
    else:
      from bert_jax import modern_modeling
      self.model = modern_modeling.ModernBertModel(config, rngs=rngs)
    # A scalar: replicated (no logical axes); optim.decay_mask leaves it undecayed.
    self.logit_scale = (nnx.Param(jnp.asarray(math.log(learnable_scale), jnp.float32))
                        if learnable_scale else None)

  def __call__(self, input_ids, attention_mask, dropout_rng=None) -> jax.Array:
    """[B, D] f32 pooled (not normalised) embeddings."""
    out = inference.encoder_of(self)(input_ids, attention_mask, dropout_rng=dropout_rng)
    return inference.pool_tokens(out.last_hidden_state, attention_mask, self.pooling)


def _embed(model, batch):  # module level: a static argument of common.run_model's jit
  x = model(batch["input_ids"], batch["attention_mask"])
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames="k")
def _top_k(q_QxD, c_NxD, k: int):
  """Exact search: the k best corpus rows of each query by dot product (cosine when normed)."""
  return jax.lax.top_k(q_QxD @ c_NxD.T, k)


def search(q_QxD: np.ndarray, c_NxD: np.ndarray, k: int, block: int = 1024):
  """(scores [Q, k], indices [Q, k]) by brute force on the device, `block` queries at a time."""
  c = jnp.asarray(c_NxD)
  k = min(k, c.shape[0])
  scores, idx = [], []
  for s in range(0, len(q_QxD), block):
    q = q_QxD[s:s + block]
    pad = block - len(q) if len(q_QxD) > block else 0  # one compiled shape for every block
    v, i = _top_k(jnp.asarray(np.pad(q, ((0, pad), (0, 0)))), c, k)
    scores.append(np.asarray(v)[:len(q)])
    idx.append(np.asarray(i)[:len(q)])
  return np.concatenate(scores), np.concatenate(idx)


def _dims(text: str) -> tuple[int, ...]:
  try:
    dims = tuple(int(x) for x in str(text).replace(" ", "").split(",") if x)
  except ValueError:
    raise ConfigError(f"retrieval.matryoshka_dims={text!r} is not a comma-separated list of "
                      "integers.") from None
  if any(d <= 0 for d in dims) or list(dims) != sorted(dims, reverse=True):
    raise ConfigError(f"retrieval.matryoshka_dims={text!r} must be positive and decreasing, "
                      "e.g. 384,256,128,64.")
  return dims


class RetrievalTask:
  """Reads, encodes and scores a retrieval data set (the task of configs/finetune.py)."""

  label_names: list[str] = []
  num_labels = 0

  def __init__(self, config, tokenizer):
    d, r = config.data, config.retrieval
    self.tokenizer, self.max_seq_length = tokenizer, int(d.max_seq_length)
    if r.pooling not in POOLINGS:
      raise ConfigError(f"retrieval.pooling={r.pooling!r} is not one of {', '.join(POOLINGS)}.")
    if not r.scale > 0:
      raise ConfigError(f"retrieval.scale={r.scale} must be positive (20 is "
                        "sentence-transformers' default).")
    if config.optimizer.grad_accum_steps != 1:
      raise ConfigError("Retrieval needs optimizer.grad_accum_steps=1: accumulation would split "
                        "the batch and its in-batch negatives; set retrieval.gradcache_chunks to "
                        "fit a large batch instead.")
    chunks = int(r.gradcache_chunks)
    if chunks < 1 or config.train.batch_size % chunks:
      raise ConfigError(f"retrieval.gradcache_chunks={chunks} must be >= 1 and divide "
                        f"train.batch_size={config.train.batch_size}.")
    self.config, self.chunks = r, chunks
    self.dims = _dims(r.matryoshka_dims)
    self.metric = config.train.metric or "ndcg@10"
    if self.metric not in METRICS:
      raise ConfigError(f"train.metric={self.metric!r} is not a retrieval metric; use one of "
                        f"{', '.join(METRICS)}.")
    if not d.train_file:
      raise DataError("Retrieval needs data.train_file (query/positive pairs); see "
                      "docs/retrieval.md, or build the Bible pairs with "
                      "`python -m bert_jax.bible_pairs --out=DIR`.")
    if not d.dev_dir:
      raise DataError("Retrieval needs data.dev_dir, a BEIR-layout folder (corpus.jsonl, "
                      "queries.jsonl, qrels/); see docs/retrieval.md.")
    pairs = retrieval_data.read_pairs(d.train_file, d.format)
    self.eval_set = retrieval_data.read_beir(d.dev_dir, d.dev_split)  # before any training
    self.num_negatives = int(d.num_hard_negatives)
    if self.num_negatives:
      short = [(n, len(negs)) for n, negs in zip(pairs.lines, pairs.negatives, strict=True)
               if len(negs) < self.num_negatives]
      if short:
        raise DataError(f"{d.train_file}:{short[0][0]} has {short[0][1]} negatives but "
                        f"data.num_hard_negatives={self.num_negatives}; give every example that "
                        f"many ({len(short)} lines have fewer) or lower the setting.")
    self.train_arrays = self._train_arrays(pairs)
    self.eval_arrays = {"queries": self._encode(self.eval_set.queries),
                        "corpus": self._encode(self.eval_set.docs)}
    self.sequences_per_example = 2 + self.num_negatives

  # ----------------------------------------------------------------- encoding
  def _encode(self, texts) -> dict[str, np.ndarray]:
    enc = self.tokenizer(list(texts), max_length=self.max_seq_length, padding="max_length",
                         truncation=True)
    return {"input_ids": np.asarray(enc["input_ids"], np.int32),
            "attention_mask": np.asarray(enc["attention_mask"], np.int32)}

  def _train_arrays(self, pairs) -> dict[str, np.ndarray]:
    q, p = self._encode(pairs.queries), self._encode(pairs.positives)
    out = {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
           "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"]}
    if self.num_negatives:
      k = self.num_negatives
      negs = self._encode([t for ns in pairs.negatives for t in ns[:k]])
      out["n_input_ids"] = negs["input_ids"].reshape(-1, k, self.max_seq_length)
      out["n_attention_mask"] = negs["attention_mask"].reshape(-1, k, self.max_seq_length)
    return out

  # ----------------------------------------------------------------- model and loss
  def make_model(self, bert_config, rngs):
    r = self.config
    return SentenceEncoder(bert_config, rngs=rngs, pooling=r.pooling,
                           learnable_scale=float(r.scale) if r.learnable_scale else 0.0)

  def loss_fn(self, model, batch, dropout_rng):
    """InfoNCE of the queries against the positives and hard negatives of the global batch."""
    def encode(x, rng):
      return model(x["input_ids"], x["attention_mask"], dropout_rng=rng)

    def embed(prefix, i):
      inputs = {"input_ids": batch[f"{prefix}_input_ids"],
                "attention_mask": batch[f"{prefix}_attention_mask"]}
      if inputs["input_ids"].ndim == 3:  # negatives [B, K, L] -> [B*K, L]
        inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      return contrastive.embed_chunked(encode, inputs, self.chunks, rng)

    q_BxD, p_BxD = embed("q", 0), embed("p", 1)
    if self.num_negatives:
      p_BxD = jnp.concatenate([p_BxD, embed("n", 2)])  # [B + B*K, D]
    if model.logit_scale is not None:
      scale = jnp.exp(jnp.minimum(model.logit_scale[...], math.log(MAX_SCALE)))
    else:
      scale = jnp.float32(self.config.scale)
    return contrastive.retrieval_loss(q_BxD, p_BxD, scale, symmetric=bool(self.config.symmetric),
                                      matryoshka_dims=self.dims)

  # ----------------------------------------------------------------- evaluation
  def embed(self, model, arrays, mesh, batch_size: int) -> np.ndarray:
    return common.run_model(model, _embed, arrays, batch_size, mesh)

  def evaluate(self, model, mesh, batch_size: int) -> tuple[dict[str, float], list[dict]]:
    ev = self.eval_set
    q = self.embed(model, self.eval_arrays["queries"], mesh, batch_size)
    c = self.embed(model, self.eval_arrays["corpus"], mesh, batch_size)
    results, records = {}, []
    dims = self.dims or (q.shape[-1],)
    for d in dims:
      qd, cd = q[:, :d], c[:, :d]
      if d != q.shape[-1]:
        qd = qd / np.maximum(np.linalg.norm(qd, axis=-1, keepdims=True), 1e-12)
        cd = cd / np.maximum(np.linalg.norm(cd, axis=-1, keepdims=True), 1e-12)
      scores, idx = search(qd, cd, 10)
      ranked = [[ev.doc_ids[j] for j in row] for row in idx]
      got = metrics_lib.ranking_scores(ranked, [ev.qrels[i] for i in ev.query_ids])
      suffix = "" if d == dims[0] else f"_{d}"  # Matryoshka: ndcg@10_128, ...
      results.update({k + suffix: v for k, v in got.items()})
      if not records:
        records = [{"query_id": qid, "query": text, "top": ranked[i][:10],
                    "scores": [round(float(s), 5) for s in scores[i]],
                    "relevant": sorted(ev.qrels[qid])}
                   for i, (qid, text) in enumerate(zip(ev.query_ids, ev.queries, strict=True))]
    return results, records

  def save_best(self, model, tokenizer, path, extra_info: dict) -> None:
    """WORKDIR/best as a sentence-transformers folder (also a HF folder bert_jax reads)."""
    import json

    from bert_jax import loading
    loading.save_pretrained(model, tokenizer, path, "sentence-transformers", overwrite=True,
                            pooling=self.config.pooling, normalize=True,
                            max_seq_length=self.max_seq_length)
    arch = type(inference.encoder_of(model)).__name__  # BertModel | ModernBertModel
    (path / "model_info.json").write_text(json.dumps(
        {"architecture": arch, "task": "retrieval", **extra_info}, indent=2,
        default=float) + "\n", encoding="utf-8")

  def info(self) -> dict:
    return {"task": "retrieval", "pooling": self.config.pooling,
            "max_seq_length": self.max_seq_length, "normalize": True}


def predict(model, tokenizer, info: dict, path, batch_size: int, overrides: dict) -> list[dict]:
  """{"text", "embedding"} for each non-empty line of a text file (normalised vectors)."""
  from bert_jax import sentence_embedding
  texts, _ = sentence_embedding.read_lines(path)
  if not texts:
    raise DataError(f"{path} has no non-empty lines; pass a file with one text per line.")
  vectors = sentence_embedding.embed(
      model, tokenizer, texts, pooling=overrides.get("pooling") or info.get("pooling", "mean"),
      normalize=True, batch_size=batch_size, max_length=int(info.get("max_seq_length", 128)))
  return [{"text": t, "embedding": [round(float(x), 6) for x in v]}
          for t, v in zip(texts, vectors, strict=True)]
