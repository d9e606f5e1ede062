"""benchmarks/inference_stacks.median_rows: a run of several rounds reports each figure's median
over the rounds that ran, keeps every round's values, and a (stack, precision) that failed in
every round stays a failure."""
from benchmarks.inference_stacks import median_rows


def _row(stack, precision, per_s, p50, rnd, workload="embed"):
  return {"workload": workload, "stack": stack, "precision": precision, "per_s": per_s,
          "batch1_per_s": 1000 / p50, "p50_ms": p50, "p99_ms": 2 * p50, "round": rnd,
          "outputs": f"/tmp/{stack}-{precision}.npy"}


def test_median_rows_take_each_figures_median_over_rounds():
  rows = [_row("bert_jax", "auto", 250.0, 6.8, 0), _row("onnxruntime", "float32", 157.0, 5.9, 0),
          _row("bert_jax", "auto", 212.0, 9.5, 1), _row("onnxruntime", "float32", 200.0, 4.1, 1),
          _row("bert_jax", "auto", 240.0, 7.0, 2),
          {"workload": "embed", "stack": "onnxruntime", "precision": "float32", "round": 2,
           "error": "timed out"},
          {"stack": "torch", "precision": "bf16_autocast", "round": 0, "error": "boom"},
          {"stack": "torch", "precision": "bf16_autocast", "round": 1, "error": "boom again"}]
  out = {(r["stack"], r["precision"]): r for r in median_rows(rows)}
  ours, ort = out[("bert_jax", "auto")], out[("onnxruntime", "float32")]
  assert ours["per_s"] == 240.0 and ours["p50_ms"] == 7.0 and ours["p99_ms"] == 14.0
  assert ours["rounds"]["per_s"] == [250.0, 212.0, 240.0]
  assert "round" not in ours and ours["outputs"] == "/tmp/bert_jax-auto.npy"
  assert ort["per_s"] == 178.5 and ort["rounds"]["p50_ms"] == [5.9, 4.1]  # The failed round out.
  assert out[("torch", "bf16_autocast")]["error"] == "boom again"
  assert len(out) == 3
