"""Tokens/s and MFU of one bert_jax pretraining step, against PyTorch and Hugging Face Flax.

  benchmarks/setup_bench_venv.sh                      # once: .venv-bench with the peer stacks
  .venv/bin/python -m benchmarks.pretrain_step --json=/tmp/bench.json
  .venv/bin/python -m benchmarks.pretrain_step --gpu --json=/tmp/gpu.json  # on a GPU, no peers

GPU mode: BERT-base and -large at seq 128 and 512, bf16, cuDNN fused attention against XLA's on
every case (`--gpu_cases`, `--gpu_attention`), batch sized to the chip's memory; MFU against a
measured 8192^2 bf16 matmul and the vendor's dense bf16 peak (989 TFLOP/s for H100 / H200),
tokens/s, and the compiled step's memory (`step_bytes`: arguments + temporaries + outputs not
aliased, from XLA's memory analysis) beside the allocator's high-water mark. In both modes the
JSON is rewritten after every case (GPU: every row), so a run cut short keeps what it measured.

CPU mode (default): `--cases` (default BERT-base batch 8 x seq 128 with 20 masked positions,
BERT-base 2 x 512 with 80, and 4 layers / 256 hidden "mini" 8 x 128), MLM + NSP, AdamW
(configs/pretrain.py:base's optimizer), dropout 0.1, vocab 30522, synthetic batches. bert_jax runs
in this process exactly as `train._run_locked` builds its step (benchmarks/bert_jax_step.py);
PyTorch 2.13 `BertForPreTraining` and transformers 4.57.6 `FlaxBertForPreTraining` run the same
workload as subprocesses in .venv-bench (their own way: MLM logits at every position), each at
its default and at its best (PEER_VARIANTS: PyTorch eager / torch.compile, f32 / autocast bf16,
default / fused AdamW; HF Flax f32 / bf16 compute). The ratio that counts is bert_jax over each
peer's fastest variant (`vs_fastest` in the JSON). Each figure is the median of `--steps` steps
after `--warmup`. The JSON records the CPU model, its matmul-relevant flags and the load average.
On a noisy host `--rounds=N` runs every stack and variant N times per case, round-robin (every
other round reversed): step times are the medians over the rounds (benchmarks/rounds.py), each
peer row also holds bert_jax's speed over it within each round (`round_bert_jax_x`), and the
JSON keeps every round (`round_rows`).

MFU = model FLOPs / step time / measured peak, with the same model FLOPs for every stack
(bert_jax.flops: matmuls, MLM logits at the masked positions, backward = 2x forward) and the
faster of the two measured peaks of a jitted 4096^2 matmul on this machine (f32, and bf16 inputs
with f32 accumulation): on a CPU that emulates bf16 the f32 peak is the physical limit. The
peaks are measured before the cases and again after them, and the higher taken (a slow spell
during one measurement put BERT-base at "105% MFU" in run Z).
`mfu_vs_bf16_peak` and `mfu_vs_f32_peak` give both. With `--rounds`, each round also measures
the peak just before bert_jax's steps, and bert_jax's row holds the MFU within each round
(`round_mfu`, its median `median_round_mfu`): on a host whose speed drifts by a third between
minutes, the step and the peak then come from the same spell, where the conservative figure
above divides a median step by the best peak of the run.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from benchmarks import peer_common, rounds  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CASES = flags.DEFINE_list(
    "cases", ["base:8x128", "base:2x512", "mini:8x128"],
    "CPU mode: PRESET:BATCHxSEQ[:PREDICTIONS] per row group (predictions default: 20 at seq 128 "
    "and 80 at 512, BERT's values; 15% of the sequence otherwise).")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "bfloat16", "float32"],
                           "bert_jax matmul input dtype (model.dtype); auto: bf16 where this "
                           "device computes it natively, else f32 (bert_jax.device_dtype).")
_STEPS = flags.DEFINE_integer("steps", 7, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEERS = flags.DEFINE_list("peers", ["pytorch", "hf_flax"], "Peers to run: pytorch, hf_flax.")
_VARIANTS = flags.DEFINE_list(
    "peer_variants", [],
    "Peer variants to run (default: all of PEER_VARIANTS for each of --peers), e.g. "
    "pytorch:eager-f32,hf_flax:bf16.")
_BENCH_VENV = flags.DEFINE_string(
    "bench_venv", os.environ.get("BENCH_VENV", os.path.join(_REPO, ".venv-bench")),
    "Virtualenv with the peer stacks (setup_bench_venv.sh; default $BENCH_VENV, else "
    ".venv-bench in the repository).")
_PEER_TIMEOUT = flags.DEFINE_integer("peer_timeout", 1800, "Seconds per peer run.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "CPU mode: times every stack and variant runs per "
                               "case, round-robin (every other round reversed); each step time "
                               "is the median over the rounds and each ratio also the rounds' "
                               "own (a noisy host moves runs minutes apart by 20-30%).")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_GPU = flags.DEFINE_bool("gpu", False, "GPU mode: bf16, cuDNN attention, BERT-base and -large at "
                         "seq 128 and 512, batch sized to the chip; no peers.")

_GPU_CASES = flags.DEFINE_list("gpu_cases", ["base:128", "base:512", "large:128", "large:512"],
                               "GPU mode: PRESET:SEQ cases to run.")
_PRNG = flags.DEFINE_enum("prng_impl", "threefry2x32", ["threefry2x32", "rbg", "unsafe_rbg"],
                          "jax_default_prng_impl for every key of the run (dropout's masks).")
_GPU_ATTENTION = flags.DEFINE_list("gpu_attention", ["cudnn", "xla"],
                                   "GPU mode: attention kernels to compare on every case.")

PEER_SCRIPTS = {"pytorch": "peer_torch.py", "hf_flax": "peer_flax.py"}
# Each peer at its default (first) and at its best: the arguments its script gets.
PEER_VARIANTS = {
    "pytorch": {
        "eager-f32-default": ["--dtype", "float32", "--optimizer", "default"],
        "eager-f32": ["--dtype", "float32"],
        "eager-bf16": ["--dtype", "bfloat16"],
        "compile-f32": ["--dtype", "float32", "--compile"],
        "compile-bf16": ["--dtype", "bfloat16", "--compile"],
    },
    "hf_flax": {"f32": ["--dtype", "float32"], "bf16": ["--dtype", "bfloat16"]},
}
# CPU flags that decide which matmul kernels a stack can use (recorded with every run).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")


def parse_case(text: str) -> tuple[str, int, int, int]:
  """'base:8x128' or 'base:8x128:20' -> (preset, batch, seq, predictions)."""
  try:
    parts = text.split(":")
    preset, (b, l) = parts[0], map(int, parts[1].lower().split("x"))
    pred = int(parts[2]) if len(parts) > 2 else {128: 20, 512: 80}.get(l, -(-15 * l // 100))
  except (IndexError, ValueError):
    raise app.UsageError(f"--cases entry {text!r} is not PRESET:BATCHxSEQ[:PREDICTIONS], e.g. "
                         f"base:8x128 or base:2x512:80.") from None
  if preset not in peer_common.PRESETS:
    raise app.UsageError(f"--cases entry {text!r}: unknown preset {preset!r}; choose from "
                         f"{sorted(peer_common.PRESETS)}.")
  if len(parts) > 3 or min(b, l, pred) < 1 or pred >= l:
    raise app.UsageError(f"--cases entry {text!r}: batch, sequence and predictions must be "
                         f"positive, with fewer predictions than positions.")
  return preset, b, l, pred


def peer_variants(peers: list[str], wanted: list[str]) -> list[tuple[str, str]]:
  """[(peer, variant)] to run: every variant of `peers`, or those named in `wanted`."""
  unknown = sorted(set(peers) - set(PEER_SCRIPTS))
  if unknown:
    raise app.UsageError(f"Unknown peers {unknown}; choose from {sorted(PEER_SCRIPTS)}.")
  every = [(p, v) for p in peers for v in PEER_VARIANTS[p]]
  if not wanted:
    return every
  bad = [w for w in wanted if tuple(w.split(":", 1)) not in every]
  if bad:
    raise app.UsageError(f"Unknown peer variants {bad}; choose from "
                         f"{[f'{p}:{v}' for p, v in every]}.")
  return [tuple(w.split(":", 1)) for w in wanted]


def machine() -> dict:
  from bert_jax import allocator
  info = {"nproc": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(),
          # every stack's process (peers inherit the environment): bert_jax/allocator.py
          "allocator": allocator.in_use()}
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout \
        .splitlines():
      key, _, value = line.partition(":")
      if key in ("Model name", "CPU family", "Model", "Hypervisor vendor"):
        info[{"Model name": "cpu"}.get(key, key.lower().replace(" ", "_"))] = value.strip()
      elif key == "Flags":
        have = set(value.split())
        info["cpu_flags"] = {f: f in have for f in CPU_FLAGS}
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    info["loadavg_start"] = os.getloadavg()
  except OSError:
    pass
  return info


def run_peer(name: str, variant: str, case: tuple[str, int, int, int], python: str) -> dict:
  preset, b, l, pred = case
  cmd = [python, os.path.join(_REPO, "benchmarks", PEER_SCRIPTS[name]), "--preset", preset,
         "--batch_size", str(b), "--seq_len", str(l), "--max_predictions", str(pred),
         "--steps", str(_STEPS.value), "--warmup", str(_WARMUP.value),
         *PEER_VARIANTS[name][variant]]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  dtype = PEER_VARIANTS[name][variant][1]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PEER_TIMEOUT.value,
                          env=env)
  except subprocess.TimeoutExpired:
    return {"name": name, "variant": variant, "dtype": dtype, "command": " ".join(cmd),
            "error": f"no result within --peer_timeout={_PEER_TIMEOUT.value} s"}
  lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
  if proc.returncode or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    return {"name": name, "variant": variant, "dtype": dtype, "command": " ".join(cmd),
            "error": f"exit {proc.returncode}: {tail}"}
  out = json.loads(lines[-1])
  out.update(variant=variant, dtype=dtype, command=" ".join(cmd))
  return out


def fastest_peak(peaks: dict) -> float:
  """MFU's denominator: the faster of the measured f32 and bf16-input matmul peaks."""
  return max(peaks["f32"], peaks["bf16_in_f32_acc"])


def add_rates(r: dict, tokens: int, model_flops: float, executed_flops: float,
              peaks: dict) -> dict:
  if "median_s" not in r:
    return r
  achieved = model_flops / r["median_s"]
  r.update(tokens_per_s=tokens / r["median_s"], model_flops=model_flops,
           executed_flops=executed_flops,
           mfu=achieved / fastest_peak(peaks),
           mfu_vs_bf16_peak=achieved / peaks["bf16_in_f32_acc"],
           mfu_vs_f32_peak=achieved / peaks["f32"],
           executed_flops_per_s=executed_flops / r["median_s"])
  return r


def cpu_mode(write=None) -> dict:
  """Every case's rows; `write(results)` after each case, so a run cut short keeps them."""
  python = os.path.join(_BENCH_VENV.value, "bin", "python")
  cases = [parse_case(c) for c in _CASES.value]
  variants = peer_variants(_PEERS.value, _VARIANTS.value)
  if variants and not os.path.exists(python):
    raise app.UsageError(f"No peer virtualenv at {_BENCH_VENV.value}; create it with "
                         f"benchmarks/setup_bench_venv.sh, or pass --peers= to skip the peers.")
  import jax

  from benchmarks import bert_jax_step, matmul_peak
  from bert_jax import flops as flops_lib
  from bert_jax.pretraining import bert_config_from

  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": machine(), "jax": jax.__version__, "device": str(jax.devices()[0]),
             "command": " ".join(sys.argv), "rows": []}
  from bert_jax import onednn
  # A kernel library that does not build sends every product back to XLA without an error.
  results["onednn"] = onednn.unavailable_reason() or "usable"
  if results["onednn"] != "usable":
    print(f"The oneDNN kernels are unusable, every product runs on XLA: {results['onednn']}",
          flush=True)
  print("Measuring the matmul peak (jitted 4096^2) ...", flush=True)
  peaks = matmul_peak.measure()
  results["peak_flops_per_s"] = peaks
  results["mfu_denominator"] = max(("f32", "bf16_in_f32_acc"), key=lambda k: peaks[k])
  for name in ("f32", "bf16"):
    if f"{name}_onednn" in peaks:
      print(f"  {name}: XLA's dot {peaks[f'{name}_xla'] / 1e9:.0f}, oneDNN's ({name} Dense "
            f"layers here) {peaks[f'{name}_onednn'] / 1e9:.0f} GFLOP/s", flush=True)
  print(f"  f32 {peaks['f32'] / 1e9:.0f} GFLOP/s; bf16 inputs, f32 accumulation "
        f"{peaks['bf16_in_f32_acc'] / 1e9:.0f} GFLOP/s", flush=True)
  for case in cases:
    preset, b, l, pred = case
    config = bert_jax_step.bench_config(preset, b, l, pred, _DTYPE.value)
    bc = bert_config_from(config.model, 30522)
    model_flops = flops_lib.train_flops_per_step(bc, b, l, pred)
    all_positions = flops_lib.train_flops_per_step(bc, b, l, None)
    ours = _DTYPE.value if _DTYPE.value != "auto" else f"auto ({bc.dtype})"
    runs = []
    for rnd in range(_ROUNDS.value):
      order = [("bert_jax", ours), *variants]
      for name, variant in (order if rnd % 2 == 0 else order[::-1]):
        if name == "bert_jax":
          round_peak = ({"round_peak_flops_per_s": fastest_peak(matmul_peak.measure())}
                        if _ROUNDS.value > 1 else {})
          print(f"[{preset} {b}x{l}] bert_jax ({_DTYPE.value} -> {bc.dtype}) ...", flush=True)
          row = dict(bert_jax_step.measure(config, steps=_STEPS.value, warmup=_WARMUP.value,
                                           with_custom_calls=True),
                     variant=ours, **round_peak)
          print(f"  custom calls in the step: {row['custom_calls'] or 'none'}", flush=True)
        else:
          print(f"[{preset} {b}x{l}] {name} {variant} ...", flush=True)
          row = run_peer(name, variant, case, python)
        runs.append(dict(row, round=rnd))
    rows = [add_rates(r, b * l, model_flops, model_flops if r["name"] == "bert_jax"
                      else all_positions, peaks)
            for r in rounds.median_rounds(runs, ("name", "variant"), ("median_s",))]
    if _ROUNDS.value > 1:
      results.setdefault("round_rows", []).extend(runs)
    for r in rows:
      r.update(preset=preset, batch_size=b, seq_len=l, max_predictions=pred)
      if r["name"] == "bert_jax" and _ROUNDS.value > 1:
        r.pop("round_peak_flops_per_s", None)
        r["round_mfu"] = rounds.within_round_mfu(runs, "bert_jax", model_flops)
        if r["round_mfu"]:
          r["median_round_mfu"] = statistics.median(r["round_mfu"])
    add_ratios(rows)
    results["rows"] += rows
    results["machine"]["loadavg_end"] = os.getloadavg()
    if write:
      write(results)
  # The peak again after the cases: a ceiling, so a slow spell on a shared host can only lower
  # a measurement of it; MFU is against the higher of the two.
  print("Measuring the matmul peak again ...", flush=True)
  again = matmul_peak.measure()
  results["peak_measurements"] = [peaks, again]
  peaks = {k: max(v, again.get(k, v)) for k, v in peaks.items()}
  results["peak_flops_per_s"] = peaks
  results["mfu_denominator"] = max(("f32", "bf16_in_f32_acc"), key=lambda k: peaks[k])
  for r in results["rows"]:
    if "model_flops" in r:
      add_rates(r, r["batch_size"] * r["seq_len"], r["model_flops"], r["executed_flops"], peaks)
  print_table(results)
  return results


def add_ratios(rows: list[dict]) -> None:
  """bert_jax's speed over each row's, and over each peer's fastest variant (one case's rows)."""
  ours = next((r.get("tokens_per_s") for r in rows if r["name"] == "bert_jax"), None)
  if not ours:
    return
  fastest: dict[str, dict] = {}
  for r in rows:
    if r["name"] != "bert_jax" and "tokens_per_s" in r:
      r["bert_jax_x"] = ours / r["tokens_per_s"]
      if r["tokens_per_s"] > fastest.get(r["name"], {}).get("tokens_per_s", 0.0):
        fastest[r["name"]] = r
  mine = next(r for r in rows if r["name"] == "bert_jax")
  mine["vs_fastest"] = {n: {"variant": r["variant"], "x": ours / r["tokens_per_s"]}
                        for n, r in fastest.items()}
  for r in fastest.values():
    r["fastest_of_peer"] = True
  for r in rows:  # --rounds: bert_jax over the peer within each round
    if r["name"] != "bert_jax" and len(r.get("round_ids", [])) > 1:
      r["round_bert_jax_x"] = rounds.paired_ratios(mine, r, "median_s", faster_is_larger=False)


def print_table(results: dict) -> None:
  print(f"\n{'case':14s} {'stack':9s} {'variant':18s} {'step ms':>8s} {'tokens/s':>9s} "
        f"{'MFU':>6s} {'bert_jax x':>10s}")
  for r in results["rows"]:
    case = f"{r['preset']} {r['batch_size']}x{r['seq_len']}"
    if "error" in r:
      print(f"{case:14s} {r['name']:9s} {r.get('variant', ''):18s} failed: {r['error']}")
      continue
    ratio = f"{r['bert_jax_x']:.2f}x" if "bert_jax_x" in r else ""
    star = "*" if r.get("fastest_of_peer") else " "
    per_round = ", ".join([f"{x:.2f}" for x in r.get("round_bert_jax_x", [])]
                          + [f"MFU {x:.1%}" for x in r.get("round_mfu", [])])
    print(f"{case:14s} {r['name']:9s} {r.get('variant', ''):18s} {1e3 * r['median_s']:8.0f} "
          f"{r['tokens_per_s']:9.0f} {r['mfu']:6.1%} {ratio:>10s}{star}"
          + (f"  rounds {per_round}" if per_round else ""))
  m = results.get("machine", {})
  print(f"\n*: the peer's fastest variant (the ratio that counts). MFU: model FLOPs (MLM at the "
        f"masked positions for every stack) / step time / the fastest precision's measured "
        f"matmul peak ({results.get('mfu_denominator')}). Load average "
        f"{m.get('loadavg_start')} -> {m.get('loadavg_end')} on {m.get('nproc')} CPUs.")


# ----------------------------------------------------------------------------- GPU mode

# (preset, seq_len, max_predictions): BERT's phase-1 and phase-2 shapes.
GPU_CASES = (("base", 128, 20), ("base", 512, 80), ("large", 128, 20), ("large", 512, 80))
# Sequences per step on an 80 GB chip (scaled by the chip's memory, rounded to a multiple of 8);
# about 64k tokens for base and 32k for large, well inside memory without remat.
GPU_BATCH_80GB = {("base", 128): 512, ("base", 512): 128, ("large", 128): 256, ("large", 512): 64}


def gpu_batch(preset: str, seq_len: int, device) -> int:
  try:
    hbm = device.memory_stats()["bytes_limit"]
  except (AttributeError, KeyError, TypeError):
    hbm = 80 * 2**30
  scale = max(hbm / (80 * 2**30), 0.125)
  return max(8, int(GPU_BATCH_80GB[(preset, seq_len)] * scale) // 8 * 8)


def gpu_plan(case_names: list[str], impls: list[str]) -> list[tuple[str, int, int, str]]:
  """[(preset, seq, predictions, attention impl)] from --gpu_cases and --gpu_attention."""
  known = {f"{p}:{l}": (p, l, pred) for p, l, pred in GPU_CASES}
  bad = [c for c in case_names if c not in known] + [i for i in impls if i not in ("cudnn", "xla")]
  if bad:
    raise app.UsageError(f"Unknown --gpu_cases / --gpu_attention entries {bad}; cases are "
                         f"{sorted(known)}, attention cudnn or xla.")
  return [(*known[c], impl) for c in case_names for impl in impls]


def gpu_mode(write=None) -> dict:
  """Every (case, attention) row; `write(results)` after each row, so a run cut short keeps
  what it measured."""
  import jax

  from benchmarks import bert_jax_step, matmul_peak
  from bert_jax import flops as flops_lib

  plan = gpu_plan(_GPU_CASES.value, _GPU_ATTENTION.value)
  dev = jax.devices()[0]
  if dev.platform != "gpu":
    raise app.UsageError(f"--gpu needs a GPU but JAX sees {dev.platform} devices; install "
                         f"jax[cuda12] or jax[cuda13] (as the driver needs) or drop --gpu.")
  chip = flops_lib.chip_name(dev)
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": machine(), "jax": jax.__version__, "device": dev.device_kind,
             "command": " ".join(sys.argv), "prng_impl": _PRNG.value, "rows": []}
  measured = matmul_peak.matmul_flops_per_s(8192, jax.numpy.bfloat16, reps=10, chain=8)
  vendor = None if chip == "cpu" else flops_lib.CHIPS[chip]["peak_flops"]  # None: unknown GPU.
  n_dev = jax.device_count()
  results["peak_flops_per_s"] = {"bf16_in_f32_acc_measured": measured, "vendor": vendor}
  print(f"{dev.device_kind}: measured bf16 matmul {measured / 1e12:.0f} TFLOP/s; vendor "
        f"{(vendor or 0) / 1e12:.0f} TFLOP/s", flush=True)
  for preset, seq, pred, impl in plan:
    b = gpu_batch(preset, seq, dev) * n_dev  # Global batch: the per-chip batch on every chip.
    # cuDNN's fused attention has no attention-probability dropout (attention.resolve_impl falls
    # back to XLA when it is on), so every GPU row, xla included, trains with hidden dropout
    # 0.1 only: the two attention kernels do the same work.
    config = bert_jax_step.bench_config(preset, b, seq, pred, "bfloat16", impl, dropout=0.1)
    config.model.attention_probs_dropout_prob = 0.0
    print(f"[{preset} seq {seq} batch {b} attention {impl}] ...", flush=True)
    try:
      r = bert_jax_step.measure(config, steps=_STEPS.value, warmup=_WARMUP.value,
                                with_custom_calls=True)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: report it and go on.
      results["rows"].append({"preset": preset, "seq_len": seq, "batch_size": b,
                              "attention_impl": impl, "error": str(e).splitlines()[0][:300]})
      print(f"  failed: {str(e).splitlines()[0][:300]}", flush=True)
      write and write(results)
      continue
    per_chip = r["model_flops"] / r["median_s"] / n_dev
    stats = dev.memory_stats() or {}
    r.update(devices=n_dev, tokens_per_s_per_chip=r["tokens_per_s"] / n_dev,
             mfu_vs_measured=per_chip / measured,
             mfu_vs_vendor=per_chip / vendor if vendor else None,
             # The allocator's high-water mark so far in this process (rows run in order).
             process_peak_bytes_in_use=stats.get("peak_bytes_in_use"))
    results["rows"].append(r)
    write and write(results)
    print(f"  {1e3 * r['median_s']:.1f} ms/step, {r['tokens_per_s_per_chip']:,.0f} tokens/s/chip, "
          f"MFU {r['mfu_vs_measured']:.1%} of measured, {(r['mfu_vs_vendor'] or 0):.1%} of "
          f"vendor peak, step memory {(r.get('step_bytes') or 0) / 2**30:.1f} GiB; custom calls "
          f"{r['custom_calls']}", flush=True)
  return results


def write_json(path: str, results: dict) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2, default=str)
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options are --flags.")
  from bert_jax import allocator
  allocator.reexec()  # as the CLIs run (BERT_JAX_ALLOCATOR); the peers inherit it
  if _ROUNDS.value < 1:
    raise app.UsageError(f"--rounds={_ROUNDS.value}: run at least one round.")
  if _JSON.value and os.path.exists(_JSON.value):
    raise app.UsageError(f"{_JSON.value} already exists; choose another --json path.")
  write = (lambda r: write_json(_JSON.value, r)) if _JSON.value else None
  import jax
  jax.config.update("jax_default_prng_impl", _PRNG.value)
  results = gpu_mode(write) if _GPU.value else cpu_mode(write)
  if write:
    write(results)
    print(f"Wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
