"""benchmarks/rounds.py, behind `--rounds` of benchmarks.inference and benchmarks.pretrain_step:
each figure is the median over the rounds that ran, every round's value is kept, a variant that
failed in every round stays a failure, and ratios pair the rounds both sides ran."""
from benchmarks import rounds


def _row(stack, precision, per_s, p50, rnd, workload="embed"):
  return {"workload": workload, "stack": stack, "precision": precision, "per_s": per_s,
          "p50_ms": p50, "round": rnd, "outputs": f"/tmp/{stack}-{precision}.npy"}


def test_median_rounds_take_each_figures_median_over_the_rounds_that_ran():
  rows = [_row("bert_jax", "auto", 250.0, 6.8, 0), _row("onnxruntime", "float32", 157.0, 5.9, 0),
          _row("bert_jax", "auto", 212.0, 9.5, 1), _row("onnxruntime", "float32", 200.0, 4.1, 1),
          _row("bert_jax", "auto", 240.0, 7.0, 2),
          {"workload": "embed", "stack": "onnxruntime", "precision": "float32", "round": 2,
           "error": "timed out"},
          {"stack": "torch", "precision": "bf16_autocast", "round": 0, "error": "boom"},
          {"stack": "torch", "precision": "bf16_autocast", "round": 1, "error": "boom again"}]
  out = {(r["stack"], r["precision"]): r
         for r in rounds.median_rounds(rows, ("workload", "stack", "precision"),
                                       ("per_s", "p50_ms"))}
  ours, ort = out[("bert_jax", "auto")], out[("onnxruntime", "float32")]
  assert ours["per_s"] == 240.0 and ours["p50_ms"] == 7.0
  assert ours["rounds"]["per_s"] == [250.0, 212.0, 240.0] and ours["round_ids"] == [0, 1, 2]
  assert "round" not in ours and ours["outputs"] == "/tmp/bert_jax-auto.npy"
  assert ort["per_s"] == 178.5 and ort["round_ids"] == [0, 1]  # The failed round left out.
  assert out[("torch", "bf16_autocast")]["error"] == "boom again"
  assert len(out) == 3

  # Round by round, only where both ran: 250 / 157 and 212 / 200 sentences a second; in step
  # times (smaller is faster) the inverse.
  per_s = rounds.paired_ratios(ours, ort, "per_s", faster_is_larger=True)
  assert per_s == [250.0 / 157.0, 212.0 / 200.0]
  p50 = rounds.paired_ratios(ours, ort, "p50_ms", faster_is_larger=False)
  assert p50 == [5.9 / 6.8, 4.1 / 9.5]


def test_within_round_mfu_divides_each_rounds_step_by_its_own_peak():
  # A slow spell in round 1 slows the step and the peak measured beside it alike: within the
  # round the MFU holds, while a median step over the best peak of the run would not.
  runs = [{"name": "bert_jax", "round": 0, "median_s": 2.0, "round_peak_flops_per_s": 300e9},
          {"name": "pytorch", "round": 0, "median_s": 3.0},
          {"name": "bert_jax", "round": 1, "median_s": 2.5, "round_peak_flops_per_s": 240e9},
          {"name": "bert_jax", "round": 2, "error": "exit 1"},
          {"name": "bert_jax", "round": 3, "median_s": 2.1}]  # no peak: left out
  mfu = rounds.within_round_mfu(runs, "bert_jax", 480e9)
  assert mfu == [480e9 / 2.0 / 300e9, 480e9 / 2.5 / 240e9]
  assert rounds.within_round_mfu(runs, "hf_flax", 480e9) == []
