"""Runs `bert_jax.aot --json` over the docs/scaling.md grid and renders its table.

  python -m benchmarks.aot_scaling --out=docs/scaling_results.jsonl  # libtpu: docs/scaling.md
  python -m benchmarks.aot_scaling --out=docs/scaling_results.jsonl --render

Each row is one subprocess (one compile; memory is returned between rows). Rows already in --out
are skipped, so an interrupted sweep resumes. The order puts the most informative rows first.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = {("base", 128): "base", ("base", 512): "base_phase2", ("large", 128): "large",
          ("large", 512): "large_phase2"}
BATCH_PER_CHIP = {128: 32, 512: 8}  # 4096 tokens per chip per step either way.
# (model, seq, topology, fsdp): data takes the remaining chips, tensor stays 1.
ROWS = [
    ("large", 512, "v5e:16x16", 1), ("large", 512, "v5e:16x16", 16),
    ("base", 128, "v4:2x2x4", 1), ("large", 128, "v5p:4x4x4", 1),
    ("base", 512, "v6e:8x8", 1), ("large", 128, "v6e:8x8", 1),
    ("base", 128, "v5e:16x16", 1), ("large", 512, "v4:2x2x4", 1),
    ("base", 512, "v5p:4x4x4", 1), ("large", 128, "v4:2x2x4", 1),
    ("base", 128, "v6e:8x8", 1), ("base", 512, "v4:2x2x4", 1),
    ("large", 512, "v5p:4x4x4", 1), ("large", 512, "v6e:8x8", 1),
    ("base", 512, "v5e:16x16", 1), ("large", 128, "v5e:16x16", 1),
    ("base", 128, "v5p:4x4x4", 1),
]


def key(row) -> str:
  return "{}/{}/{}/fsdp={}".format(*row)


def run_row(row) -> dict:
  model, seq, topology, fsdp = row
  cmd = [sys.executable, "-m", "bert_jax.cli.aot",
         f"--config=configs/pretrain.py:{MODELS[model, seq]}", f"--topology={topology}",
         "--config.mesh.data=-1", f"--config.mesh.fsdp={fsdp}", "--config.mesh.tensor=1",
         f"--batch_per_chip={BATCH_PER_CHIP[seq]}", "--json"]
  t0 = time.time()
  p = subprocess.run(cmd, capture_output=True, text=True)
  out = {"key": key(row), "wall_s": round(time.time() - t0, 1), "returncode": p.returncode}
  try:
    out["report"] = json.loads(p.stdout)
  except json.JSONDecodeError:
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    out["error"] = errors[-1] if errors else p.stderr[-2000:]
  return out


def render(results: list[dict], mfu: float | None = None) -> str:
  head = ("| model | seq | topology | mesh (data x fsdp x tensor) | global / per-chip batch | "
          "HBM per chip (GiB, % of HBM) | estimate (GiB) | XLA / analytic FLOPs | "
          "tokens/s/chip at 100% | at {mfu}% MFU | all-reduce / all-gather / reduce-scatter (MiB) "
          "| compile (s) |")
  lines = []
  for r in results:
    if "report" not in r:
      lines.append(f"| {r['key']} | | | | | {r.get('error', '?')} | | | | | | |")
      continue
    x = r["report"]
    mfu = x["tokens_per_s_per_chip"]["mfu"]
    m, c = x["memory"], x["collectives"]
    mesh = " x ".join(str(v) for v in x["mesh"].values())
    comm = " / ".join(f"{c[k]['bytes'] / 2**20:,.0f}"
                      for k in ("all-reduce", "all-gather", "reduce-scatter"))
    lines.append(
        f"| {x['model']['preset']} | {x['seq_len']} | {x['topology']} ({x['chips']} chips) | "
        f"{mesh} | {x['global_batch']} / {x['per_chip_batch']} | "
        f"{m['total_bytes'] / 2**30:.1f} ({100 * m['fraction_of_hbm']:.0f}%) | "
        f"{m['estimate_total_bytes'] / 2**30:.1f} | {x['flops']['xla_over_analytic']:.3f} | "
        f"{x['tokens_per_s_per_chip']['peak']:,.0f} | {x['tokens_per_s_per_chip']['at_mfu']:,.0f} "
        f"| {comm} | {x['seconds']['compile']:.0f} |")
  sep = "|" + "---|" * 12
  return "\n".join([head.format(mfu=round(100 * (mfu or 0.4))), sep] + lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="docs/scaling_results.jsonl")
  ap.add_argument("--render", action="store_true")
  ap.add_argument("--limit", type=int, default=0, help="Stop after this many new rows.")
  args = ap.parse_args()
  done = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      done = [json.loads(l) for l in f if l.strip()]
  if args.render:
    # Table order: model, sequence, chip generation, then fsdp (the run order is by information).
    chips = ["v4", "v5e", "v5p", "v6e"]
    order = {key(r): (r[0] != "base", r[1], chips.index(r[2].split(":")[0]), r[3]) for r in ROWS}
    print(render(sorted(done, key=lambda r: order.get(r["key"], (True, 10**6, 9, 0)))))
    return
  have = {r["key"] for r in done}
  new = 0
  for row in ROWS:
    if key(row) in have:
      continue
    result = run_row(row)
    with open(args.out, "a") as f:
      f.write(json.dumps(result) + "\n")
    print(f"{key(row)}: {result['wall_s']} s, rc {result['returncode']}", flush=True)
    new += 1
    if args.limit and new >= args.limit:
      break


if __name__ == "__main__":
  main()
