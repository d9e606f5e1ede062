"""Tokens/s and MFU of one bert_jax pretraining step, against PyTorch and Hugging Face Flax.

  benchmarks/setup_bench_venv.sh                      # once: .venv-bench with the peer stacks
  .venv/bin/python -m benchmarks.pretrain_step --json=/tmp/bench.json
  .venv/bin/python -m benchmarks.pretrain_step --gpu  # on a GPU: bf16, cuDNN attention, no peers

CPU mode (default): BERT-base and 4 layers / 256 hidden ("mini"), batch 8, seq 128, 20 masked
positions, MLM + NSP, AdamW (configs/pretrain.py:base's optimizer), dropout 0.1, vocab 30522,
synthetic batches. bert_jax runs in this process exactly as `train._run_locked` builds its step
(benchmarks/bert_jax_step.py); PyTorch 2.13 `BertForPreTraining` and transformers 4.57.6
`FlaxBertForPreTraining` run the same workload as subprocesses in .venv-bench (their own way:
MLM logits at every position). Each figure is the median of `--steps` steps after `--warmup`.

MFU = model FLOPs / step time / measured peak, with the same model FLOPs for every stack
(bert_jax.flops: matmuls, MLM logits at the masked positions, backward = 2x forward) and the
peak of a jitted 4096^2 matmul with bf16 inputs and f32 accumulation on this machine.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRESETS = flags.DEFINE_list("presets", ["base", "mini"], "Model sizes (configuration.PRESETS).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step (CPU mode).")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence (CPU mode).")
_PRED = flags.DEFINE_integer("max_predictions", 20, "Masked positions per sequence.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "bert_jax matmul input dtype (model.dtype).")
_STEPS = flags.DEFINE_integer("steps", 7, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEERS = flags.DEFINE_list("peers", ["pytorch", "hf_flax"], "Peers to run: pytorch, hf_flax.")
_PEER_DTYPE = flags.DEFINE_enum("peer_dtype", "float32", ["float32", "bfloat16"],
                                "Peers' precision: float32 (their default) or bfloat16 "
                                "(torch.autocast / Flax dtype).")
_BENCH_VENV = flags.DEFINE_string("bench_venv", os.path.join(_REPO, ".venv-bench"),
                                  "Virtualenv with the peer stacks (setup_bench_venv.sh).")
_PEER_TIMEOUT = flags.DEFINE_integer("peer_timeout", 1800, "Seconds per peer run.")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_GPU = flags.DEFINE_bool("gpu", False, "GPU mode: bf16, cuDNN attention, BERT-base and -large at "
                         "seq 128 and 512, batch sized to the chip; no peers.")

PEER_SCRIPTS = {"pytorch": "peer_torch.py", "hf_flax": "peer_flax.py"}


def machine() -> dict:
  info = {"nproc": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout \
        .splitlines():
      if line.startswith("Model name:"):
        info["cpu"] = line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  try:
    info["loadavg_start"] = os.getloadavg()
  except OSError:
    pass
  return info


def run_peer(name: str, preset: str, python: str) -> dict:
  cmd = [python, os.path.join(_REPO, "benchmarks", PEER_SCRIPTS[name]), "--preset", preset,
         "--batch_size", str(_BATCH.value), "--seq_len", str(_SEQ.value),
         "--max_predictions", str(_PRED.value), "--dtype", _PEER_DTYPE.value,
         "--steps", str(_STEPS.value), "--warmup", str(_WARMUP.value)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PEER_TIMEOUT.value, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    return {"name": name, "error": f"exit {proc.returncode}: {tail}", "command": " ".join(cmd)}
  out = json.loads(lines[-1])
  out["command"] = " ".join(cmd)
  return out


def add_rates(r: dict, tokens: int, model_flops: float, executed_flops: float,
              peaks: dict) -> dict:
  if "median_s" not in r:
    return r
  r.update(tokens_per_s=tokens / r["median_s"], model_flops=model_flops,
           executed_flops=executed_flops,
           mfu=model_flops / r["median_s"] / peaks["bf16_in_f32_acc"],
           mfu_vs_f32_peak=model_flops / r["median_s"] / peaks["f32"],
           executed_flops_per_s=executed_flops / r["median_s"])
  return r


def cpu_mode() -> dict:
  import jax

  from benchmarks import bert_jax_step, matmul_peak
  from bert_jax import flops as flops_lib
  from bert_jax.pretraining import bert_config_from

  python = os.path.join(_BENCH_VENV.value, "bin", "python")
  unknown = sorted(set(_PEERS.value) - set(PEER_SCRIPTS))
  if unknown:
    raise app.UsageError(f"Unknown peers {unknown}; choose from {sorted(PEER_SCRIPTS)}.")
  if _PEERS.value and not os.path.exists(python):
    raise app.UsageError(f"No peer virtualenv at {_BENCH_VENV.value}; create it with "
                         f"benchmarks/setup_bench_venv.sh, or pass --peers= to skip the peers.")
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": machine(), "jax": jax.__version__, "device": str(jax.devices()[0]),
             "command": " ".join(sys.argv), "rows": []}
  print("Measuring the matmul peak (jitted 4096^2) ...", flush=True)
  peaks = matmul_peak.measure()
  results["peak_flops_per_s"] = peaks
  print(f"  f32 {peaks['f32'] / 1e9:.0f} GFLOP/s; bf16 inputs, f32 accumulation "
        f"{peaks['bf16_in_f32_acc'] / 1e9:.0f} GFLOP/s", flush=True)
  for preset in _PRESETS.value:
    config = bert_jax_step.bench_config(preset, _BATCH.value, _SEQ.value, _PRED.value,
                                        _DTYPE.value)
    bc = bert_config_from(config.model, 30522)
    b, l = _BATCH.value, _SEQ.value
    model_flops = flops_lib.train_flops_per_step(bc, b, l, _PRED.value)
    all_positions = flops_lib.train_flops_per_step(bc, b, l, None)
    print(f"[{preset}] bert_jax ({_DTYPE.value}) ...", flush=True)
    rows = [add_rates(bert_jax_step.measure(config, steps=_STEPS.value, warmup=_WARMUP.value),
                      b * l, model_flops, model_flops, peaks)]
    for name in _PEERS.value:
      print(f"[{preset}] {name} ({_PEER_DTYPE.value}) ...", flush=True)
      rows.append(add_rates(run_peer(name, preset, python), b * l, model_flops, all_positions,
                            peaks))
    for r in rows:
      r.update(preset=preset, batch_size=b, seq_len=l, max_predictions=_PRED.value)
      r.setdefault("dtype", _PEER_DTYPE.value)
    results["rows"] += rows
  try:
    results["machine"]["loadavg_end"] = os.getloadavg()
  except OSError:
    pass
  print_table(results)
  return results


def print_table(results: dict) -> None:
  print(f"\n{'model':6s} {'stack':9s} {'dtype':9s} {'step ms':>8s} {'tokens/s':>9s} {'MFU':>6s} "
        f"{'bert_jax x':>10s}")
  by_preset: dict[str, dict] = {}
  for r in results["rows"]:
    by_preset.setdefault(r["preset"], {})[r["name"]] = r
  for preset, rows in by_preset.items():
    ours = rows.get("bert_jax", {}).get("tokens_per_s")
    for name, r in rows.items():
      if "error" in r:
        print(f"{preset:6s} {name:9s} failed: {r['error']}")
        continue
      ratio = f"{ours / r['tokens_per_s']:.2f}x" if ours and name != "bert_jax" else ""
      print(f"{preset:6s} {name:9s} {r.get('dtype', ''):9s} {1e3 * r['median_s']:8.0f} "
            f"{r['tokens_per_s']:9.0f} {r['mfu']:6.1%} {ratio:>10s}")
  m = results.get("machine", {})
  print(f"\nMFU: model FLOPs (MLM at the masked positions for every stack) / step time / measured "
        f"bf16-input peak. Load average {m.get('loadavg_start')} -> {m.get('loadavg_end')} on "
        f"{m.get('nproc')} CPUs.")


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


def gpu_mode() -> dict:
  import jax

  from benchmarks import bert_jax_step, matmul_peak
  from bert_jax import flops as flops_lib

  dev = jax.devices()[0]
  if dev.platform != "gpu":
    raise app.UsageError(f"--gpu needs a GPU but JAX sees {dev.platform} devices; install "
                         f"jax[cuda12] or drop --gpu.")
  chip = flops_lib.chip_name(dev)
  results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
             "machine": machine(), "jax": jax.__version__, "device": dev.device_kind,
             "command": " ".join(sys.argv), "rows": []}
  measured = matmul_peak.matmul_flops_per_s(8192, jax.numpy.bfloat16, reps=10, chain=8)
  vendor = None if chip == "cpu" else flops_lib.CHIPS[chip]["peak_flops"]  # None: unknown GPU.
  n_dev = jax.device_count()
  results["peak_flops_per_s"] = {"bf16_in_f32_acc_measured": measured, "vendor": vendor}
  print(f"{dev.device_kind}: measured bf16 matmul {measured / 1e12:.0f} TFLOP/s; vendor "
        f"{(vendor or 0) / 1e12:.0f} TFLOP/s", flush=True)
  for preset, seq, pred in GPU_CASES:
    b = gpu_batch(preset, seq, dev) * n_dev  # Global batch: the per-chip batch on every chip.
    # cuDNN's fused attention has no attention-probability dropout (attention.resolve_impl falls
    # back to XLA when it is on), so the GPU rows train with hidden dropout 0.1 only.
    config = bert_jax_step.bench_config(preset, b, seq, pred, "bfloat16", "cudnn", dropout=0.1)
    config.model.attention_probs_dropout_prob = 0.0
    print(f"[{preset} seq {seq} batch {b}] ...", flush=True)
    try:
      r = bert_jax_step.measure(config, steps=_STEPS.value, warmup=_WARMUP.value)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: report it and go on.
      results["rows"].append({"preset": preset, "seq_len": seq, "batch_size": b,
                              "error": str(e).splitlines()[0][:300]})
      print(f"  failed: {str(e).splitlines()[0][:300]}", flush=True)
      continue
    per_chip = r["model_flops"] / r["median_s"] / n_dev
    r.update(devices=n_dev, tokens_per_s_per_chip=r["tokens_per_s"] / n_dev,
             mfu_vs_measured=per_chip / measured,
             mfu_vs_vendor=per_chip / vendor if vendor else None)
    results["rows"].append(r)
    print(f"  {1e3 * r['median_s']:.1f} ms/step, {r['tokens_per_s_per_chip']:,.0f} tokens/s/chip, "
          f"MFU "
          f"{r['mfu_vs_measured']:.1%} of measured, "
          f"{(r['mfu_vs_vendor'] or 0):.1%} of vendor peak", flush=True)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options are --flags.")
  if _JSON.value and os.path.exists(_JSON.value):
    raise app.UsageError(f"{_JSON.value} already exists; choose another --json path.")
  results = gpu_mode() if _GPU.value else cpu_mode()
  if _JSON.value:
    tmp = f"{_JSON.value}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(tmp, _JSON.value)
    print(f"Wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
