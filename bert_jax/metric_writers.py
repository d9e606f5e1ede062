"""Where metrics go: WORKDIR/metrics.jsonl (one JSON line per logged step), TensorBoard event
files in WORKDIR/tensorboard, and a console progress line with ETA. Only process 0 writes."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import jax


def _fmt_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(max(s, 0))
  return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class MetricWriter:

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool | None = None,
               stream=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total_steps = total_steps
    self.stream = stream or sys.stderr
    self.t0 = time.time()
    self._jsonl = None
    self._tb = None
    if self.enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard logs are optional; metrics.jsonl always exists.
        self._tb = None

  def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    row = {"step": step, "time": round(time.time() - self.t0, 3)}
    row.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if math.isfinite(float(v)):
          self._tb.add_scalar(f"{prefix}{k}", float(v), step)
      self._tb.flush()

  def progress(self, step: int, start_step: int, metrics: dict[str, float],
               time_budget_s: float | None = None, elapsed_s: float | None = None) -> None:
    """One console line: a bar, the step, key metrics and the ETA (by steps or by time budget)."""
    if not self.enabled:
      return
    elapsed = time.time() - self.t0 if elapsed_s is None else elapsed_s
    done = max(step - start_step, 1)
    # total_steps 0: a wall-clock run that has not fixed its step count yet.
    eta = elapsed / done * (self.total_steps - step) if self.total_steps else math.inf
    if time_budget_s:
      eta = min(eta, time_budget_s - elapsed)
    frac = min(step / self.total_steps if self.total_steps else 0.0, 1.0)
    bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                     if k in ("loss", "mlm_accuracy", "nsp_accuracy", "accuracy",
                              "tokens_per_sec", "mfu", "learning_rate"))
    print(f"[{bar}] step {step}/{self.total_steps or '?'} {shown} eta {_fmt_seconds(eta)}",
          file=self.stream, flush=True)

  def info(self, msg: str) -> None:
    if self.enabled:
      print(msg, file=self.stream, flush=True)

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
