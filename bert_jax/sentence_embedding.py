"""Sentence and token embeddings (feature extraction, as google-research/bert extract_features.py).

    import bert_jax
    model = bert_jax.BertModel.from_pretrained(DIR)
    tokenizer = bert_jax.BertTokenizer.from_pretrained(DIR)
    vectors = bert_jax.embed(model, tokenizer, ["A sentence.", "Another one."], normalize=True)

    bert-jax-embed --checkpoint=DIR --input=lines.txt --output=out/emb   # embed_file
      -> out/emb.npy (float32 [rows, D], or [tokens, D] with --pooling=tokens)
         out/emb.jsonl (one object per row: its 1-based line number in the input, ...)

Poolings: "mean" (average of the last layer over real tokens, [CLS] and [SEP] included, as
sentence-transformers does), "cls" (the last layer's [CLS] vector), "lasttoken" (the last real
token's vector, sentence-transformers' pooling_mode_lasttoken), "pooler" (tanh dense on
[CLS], the NSP features) and "tokens" (every token's vector). `normalize=True` divides each
vector by its L2 norm; the CLI does so when the checkpoint's `modules.json` lists a Normalize
module (sentence-transformers folders such as all-MiniLM-L6-v2) and then also takes pooling and
`max_seq_length` from `1_Pooling/config.json` and `sentence_bert_config.json`.

Texts longer than `max_length` tokens (default: the tokenizer's / model's limit) are truncated,
as sentence-transformers does; `embed` warns with the count and the CLI records `truncated` in
the index. Empty lines are skipped (the index keeps the line numbers).
"""
from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from bert_jax import inference
from bert_jax.errors import ConfigError, DataError, ExistsError, MissingFileError, ModelFileError

POOLINGS = ("mean", "cls", "lasttoken", "pooler", "tokens")


# sentence-transformers' 1_Pooling/config.json keys of the poolings bert_jax reproduces.
ST_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                   "pooling_mode_lasttoken": "lasttoken"}


def sentence_transformers_settings(path) -> dict:
  """{"pooling", "normalize", "max_length"} from a sentence-transformers folder ({} if none)."""
  path = pathlib.Path(path)
  modules_file = path / "modules.json"
  if not modules_file.is_file():
    return {}
  modules = json.loads(modules_file.read_text(encoding="utf-8"))
  out = {"normalize": any(m.get("type", "").endswith(".Normalize") for m in modules)}
  for m in modules:
    cfg_file = path / m.get("path", "") / "config.json"
    if m.get("type", "").endswith(".Pooling") and cfg_file.is_file():
      cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
      modes = [name for key, name in ST_POOLING_KEYS.items() if cfg.get(key)]
      other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and
               k not in ST_POOLING_KEYS]
      if len(modes) != 1 or other:
        raise ModelFileError(f"{cfg_file} asks for pooling {modes + other}; bert_jax reproduces "
                             "only a single mean, cls or lasttoken pooling, pass --pooling "
                             "explicitly.")
      out["pooling"] = modes[0]
  st_cfg = path / "sentence_bert_config.json"
  if st_cfg.is_file():
    max_len = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
    if isinstance(max_len, int) and max_len > 0:
      out["max_length"] = max_len
  return out


def write_sentence_transformers_files(path, *, dim: int, pooling: str = "mean",
                                      normalize: bool = True, max_seq_length: int = 256) -> None:
  """modules.json, 1_Pooling/config.json and sentence_bert_config.json beside a HF model folder
  (the model itself is the Transformer module at the folder's root, as all-MiniLM-L6-v2)."""
  path = pathlib.Path(path)
  if pooling not in ST_POOLING_KEYS.values():
    raise ConfigError(f"pooling={pooling!r} has no sentence-transformers counterpart; use one of "
                      f"{', '.join(ST_POOLING_KEYS.values())}.")
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    (path / "2_Normalize").mkdir(exist_ok=True)
  pool_cfg = {"word_embedding_dimension": int(dim), "pooling_mode_max_tokens": False,
              "pooling_mode_mean_sqrt_len_tokens": False,
              "pooling_mode_weightedmean_tokens": False, "include_prompt": True}
  pool_cfg.update({key: name == pooling for key, name in ST_POOLING_KEYS.items()})
  (path / "1_Pooling").mkdir(exist_ok=True)
  files = {"modules.json": modules, "1_Pooling/config.json": pool_cfg,
           "sentence_bert_config.json": {"max_seq_length": int(max_seq_length),
                                         "do_lower_case": False}}
  for name, obj in files.items():
    (path / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _tokenize(tokenizer, texts: Sequence[str], max_length: int):
  """([CLS] ids [SEP] rows cut to max_length, per-row truncated flags)."""
  rows, cut = [], []
  for ids in tokenizer.encode_batch(texts):
    cut.append(len(ids) + 2 > max_length)
    rows.append([tokenizer.cls_id, *ids[:max_length - 2], tokenizer.sep_id])
  return rows, cut


def _plan(rows: list[list[int]], batch_size: int, cap: int) -> list[tuple[list[int], int]]:
  """(row indices, padded length) per batch: rows grouped by their own length bucket
  (inference.LENGTH_BUCKETS), longest first, in batches of up to `batch_size`.

  A row's padded length depends on its own length only, never on its batch-mates, so its
  vector does not change with batch_size or with the other texts (padding changes the float
  summation order); each bucket's last batch may be partial.
  """
  length = {i: inference.length_bucket(len(r), cap) for i, r in enumerate(rows)}
  order = sorted(range(len(rows)), key=lambda i: (-length[i], i))
  plan, start = [], 0
  while start < len(order):
    end = start
    while (end < len(order) and end - start < batch_size
           and length[order[end]] == length[order[start]]):
      end += 1
    plan.append((order[start:end], length[order[start]]))
    start = end
  return plan


def _batches(model, rows: list[list[int]], pooling: str, batch_size: int, pad_id: int
             ) -> Iterator[tuple[list[int], np.ndarray]]:
  """Yields (row indices, float32 outputs) batch by batch, rows grouped by length.

  Each batch is dispatched before the previous one's outputs are pulled to the host, so the
  host's padding and copying overlap the computation.
  """
  encoder = inference.encoder_of(model)
  graphdef, state = inference.inference_split(encoder)
  pending = None
  for idx, length in _plan(rows, batch_size, encoder.config.max_position_embeddings):
    batch = inference.bucket(len(idx), batch_size)
    inputs = inference.pad_rows([rows[i] for i in idx], None, length, batch, pad_id)
    out = inference.encode(graphdef, state, inputs["input_ids"], inputs["attention_mask"],
                           inputs["token_type_ids"], pooling=pooling)
    if pending is not None:
      yield pending[0], np.asarray(pending[1])[:len(pending[0])]
    pending = idx, out
  if pending is not None:
    yield pending[0], np.asarray(pending[1])[:len(pending[0])]


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  # torch.nn.functional.normalize: x / max(||x||, 1e-12).
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _resolve(model, tokenizer, pooling: str, max_length: int | None, batch_size: int) -> int:
  if pooling not in POOLINGS:
    raise ConfigError(f"pooling={pooling!r} is not one of {POOLINGS}.")
  if batch_size < 1:
    raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
  encoder = inference.encoder_of(model)
  if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
    raise ConfigError(f"pooling='pooler' needs a model with a pooler; {type(model).__name__} "
                      "has none, use pooling='cls' or 'mean'.")
  cap = encoder.config.max_position_embeddings
  limit = min(cap, getattr(tokenizer, "model_max_length", cap))
  max_length = limit if max_length is None else int(max_length)
  if not 2 < max_length <= cap:
    raise ConfigError(f"max_length={max_length} must be in [3, {cap}] "
                      "(max_position_embeddings).")
  return max_length


def embed(model, tokenizer, texts, *, pooling: str = "mean", normalize: bool = False,
          batch_size: int = 32, max_length: int | None = None):
  """Embeddings of `texts` (a string or a list of strings).

  Args:
    model: BertModel or any head model (its encoder is used).
    tokenizer: the model's tokenizer.
    pooling: "mean", "cls", "lasttoken", "pooler" or "tokens" (see the module docstring).
    normalize: L2-normalise each vector (sentence-transformers' Normalize module).
    batch_size: texts per forward pass (texts of similar length are batched together).
    max_length: truncation length in tokens with [CLS]/[SEP]; default the model's limit.
  Returns:
    float32 [N, D] (or [D] for one string); for "tokens", a list of [n_i, D] arrays, one per
    text, covering [CLS] ... [SEP].
  """
  single = isinstance(texts, str)
  texts = [texts] if single else list(texts)
  max_length = _resolve(model, tokenizer, pooling, max_length, batch_size)
  rows, cut = _tokenize(tokenizer, texts, max_length)
  if any(cut):
    warnings.warn(f"{sum(cut)} of {len(texts)} texts were longer than {max_length} tokens and "
                  "were truncated (max_length).", stacklevel=2)
  if pooling == "tokens":
    out = [None] * len(texts)
    for idx, x in _batches(model, rows, pooling, batch_size, tokenizer.pad_id):
      for k, i in enumerate(idx):
        out[i] = _l2_normalize(x[k, :len(rows[i])]) if normalize else x[k, :len(rows[i])]
    return out[0] if single else out
  dim = inference.encoder_of(model).config.hidden_size
  out = np.zeros((len(texts), dim), np.float32)
  for idx, x in _batches(model, rows, pooling, batch_size, tokenizer.pad_id):
    out[idx] = x
  if normalize:
    out = _l2_normalize(out)
  return out[0] if single else out


# ------------------------------------------------------------------------------ files
def read_lines(path) -> tuple[list[str], list[int]]:
  """Non-empty stripped lines of a UTF-8 file and their 1-based line numbers."""
  texts, numbers = [], []
  n = 0
  try:
    with open(path, encoding="utf-8-sig") as f:
      for n, line in enumerate(f, start=1):
        line = line.strip()
        if line:
          texts.append(line)
          numbers.append(n)
  except UnicodeDecodeError:
    raise DataError(f"{path} is not UTF-8 text (line {n + 1}); pass a UTF-8 text file with one "
                    "text per line.") from None
  return texts, numbers


def embed_file(model, tokenizer, input_path, output_prefix, *, pooling: str = "mean",
               normalize: bool = False, batch_size: int = 32, max_length: int | None = None,
               overwrite: bool = False) -> dict:
  """Writes PREFIX.npy and PREFIX.jsonl for the lines of `input_path`; returns a summary.

  The .npy is written row by row through a memory map (the file can be larger than RAM), to
  temporary names renamed into place at the end.
  """
  npy, index = pathlib.Path(f"{output_prefix}.npy"), pathlib.Path(f"{output_prefix}.jsonl")
  for p in (npy, index):
    if p.exists() and not overwrite:
      raise ExistsError(f"{p} already exists; choose another --output or pass --overwrite.")
  max_length = _resolve(model, tokenizer, pooling, max_length, batch_size)
  texts, numbers = read_lines(input_path)
  if not texts:
    raise DataError(f"{input_path} has no non-empty lines; pass a file with one text per line.")
  rows, cut = _tokenize(tokenizer, texts, max_length)
  dim = inference.encoder_of(model).config.hidden_size
  starts = np.cumsum([0] + [len(r) for r in rows]) if pooling == "tokens" else None
  n_out = int(starts[-1]) if pooling == "tokens" else len(rows)
  npy.parent.mkdir(parents=True, exist_ok=True)
  tmp_npy = npy.with_name(f".{npy.name}.tmp-{os.getpid()}.npy")
  tmp_index = index.with_name(f".{index.name}.tmp-{os.getpid()}")
  try:
    arr = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=(n_out, dim))
    for idx, x in _batches(model, rows, pooling, batch_size, tokenizer.pad_id):
      if normalize:
        x = _l2_normalize(x)
      if pooling == "tokens":
        for k, i in enumerate(idx):
          arr[starts[i]:starts[i + 1]] = x[k, :len(rows[i])]
      else:
        arr[idx] = x
    arr.flush()
    del arr
    with open(tmp_index, "w", encoding="utf-8") as f:
      for i, (line_no, row) in enumerate(zip(numbers, rows, strict=True)):
        rec = {"row": i, "line": line_no, "n_tokens": len(row), "truncated": cut[i]}
        if pooling == "tokens":
          rec.update(start=int(starts[i]), end=int(starts[i + 1]),
                     tokens=tokenizer.convert_ids_to_tokens(row))
        f.write(json.dumps(rec) + "\n")
    os.replace(tmp_npy, npy)
    os.replace(tmp_index, index)
  finally:
    for p in (tmp_npy, tmp_index):
      if p.exists():
        p.unlink()
  return {"rows": len(rows), "vectors": n_out, "dim": dim, "truncated": int(sum(cut)),
          "max_length": max_length, "npy": str(npy), "index": str(index)}


def embed_checkpoint_file(checkpoint, input_path, output_prefix, *, pooling: str | None = None,
                          normalize: bool | None = None, batch_size: int = 32,
                          max_length: int | None = None, dtype: str | None = None,
                          overwrite: bool = False, quantize: str = "none") -> dict:
  """`embed_file` with the model and tokenizer of `checkpoint` (what `bert-jax-embed` runs).

  pooling, normalize and max_length left None come from the checkpoint's sentence-transformers
  files (else mean, False, the model's limit). Bad input and existing outputs are refused
  before the model is loaded. quantize="int8" embeds with int8 weights
  (bert_jax.quantization; "int8_dynamic": int8 activations too).
  """
  import bert_jax
  from bert_jax import quantization
  if not pathlib.Path(input_path).is_file():
    raise MissingFileError(f"--input {input_path} is not a file; pass a text file with one text "
                           "per line.")
  if not read_lines(input_path)[0]:
    raise DataError(f"{input_path} has no non-empty lines; pass a file with one text per line.")
  for suffix in (".npy", ".jsonl"):
    if pathlib.Path(f"{output_prefix}{suffix}").exists() and not overwrite:
      raise ExistsError(f"{output_prefix}{suffix} already exists; choose another --output or "
                        "pass --overwrite.")
  st = sentence_transformers_settings(checkpoint)
  from bert_jax import loading
  # The checkpoint's family decides the class (ModernBertModel for a ModernBERT).
  model = loading.load_pretrained(checkpoint, "BertModel", dtype=dtype, any_family=True)[0]
  model = quantization.quantize(model, quantize)
  tokenizer = bert_jax.BertTokenizer.from_pretrained(checkpoint)
  return embed_file(model, tokenizer, input_path, output_prefix,
                    pooling=pooling or st.get("pooling", "mean"),
                    normalize=st.get("normalize", False) if normalize is None else normalize,
                    batch_size=batch_size, max_length=max_length or st.get("max_length"),
                    overwrite=overwrite)
