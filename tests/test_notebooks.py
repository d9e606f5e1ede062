"""Every colab/*.ipynb runs top to bottom on CPU with its smoke settings (SMOKE = True).

The notebooks execute in a kernel of this interpreter (a kernel spec written to a temp
JUPYTER_PATH) with the checkout on PYTHONPATH, so the install cell (a pip install of the package,
which carries its configs) is skipped as on a runtime that already has bert_jax. Cells appended
after the last one check what the notebook computed.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel (pip install ipykernel)")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
KERNEL = "bert_jax_test"

# What each notebook must have produced (run in its kernel after the last cell).
CHECKS = {
    "pretrain_tpu": """
assert results["status"] == "completed" and results["train_steps"] == config.train.num_steps
assert 0.0 <= results["mlm_accuracy"] <= 1.0 and 0.0 <= results["nsp_accuracy"] <= 1.0
import os
assert os.path.getsize(results["curves"]) > 1000
assert os.path.isfile(f"{WORKDIR}/hf/model.safetensors")
sizes = {k: v for k, v in config.mesh.items() if k != "rules"}  # mesh.rules: the axis rules
assert sizes == MESH and MESH["data"] == -1  # the batch over every device
""",
    "finetune": """
assert summary["status"] == "completed" and summary["step"] == 2
assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
assert summary["best"]["metric"] == "accuracy"
assert hf_model.config.num_labels == 2
rows = predict.predict_file(f"{WORKDIR}/run/best", f"{data_dir}/dev.tsv")
assert len(rows) == 32 and {r["label"] for r in rows} <= {"0", "1"}
assert len(explained) == 2 and all(r["completeness_ok"] for r in explained)
assert [r["label"] for r in explained] == [r["label"] for r in rows[:2]]
""",
    "convert_and_embed": """
assert notebook.transformers_max_diff(hf_dir, model, tokenizer, SENTENCES) < 1e-4
assert notebook.transformers_max_diff(f"{WORKDIR}/hf_back", model, tokenizer, SENTENCES) < 1e-4
assert vectors.shape == (len(SENTENCES), model.config.hidden_size)
sims = notebook.cosine_similarities(vectors)
assert np.allclose(np.diag(sims), 1.0, atol=1e-5)
""",
}


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> pathlib.Path:
  """A kernel spec running this interpreter with the checkout importable."""
  root = tmp_path_factory.mktemp("jupyter")
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_OFFLINE": "1",
         "TRANSFORMERS_OFFLINE": "1", "XLA_FLAGS": ""}
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "bert_jax test", "language": "python", "env": env}))
  return root


def smoke(nb) -> None:
  """Sets SMOKE = True in the one parameter cell (papermill's `parameters` tag)."""
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1, "a notebook needs exactly one cell tagged `parameters`"
  lines = params[0].source.splitlines()
  smoke_lines = [i for i, l in enumerate(lines) if l.startswith("SMOKE = ")]
  assert len(smoke_lines) == 1, "the parameter cell needs one `SMOKE = ...` line"
  lines[smoke_lines[0]] = "SMOKE = True"
  params[0].source = "\n".join(lines)


def test_every_notebook_has_a_check():
  assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_settings(path, jupyter_path, tmp_path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  smoke(nb)
  install = [c for c in nb.cells if "pip install" in c.source]
  assert len(install) == 1 and 'find_spec("bert_jax") is None' in install[0].source
  nb.cells.append(nbformat.v4.new_code_cell(CHECKS[path.stem]))
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # Raises CellExecutionError with the cell and traceback on any failure.
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  if path.stem == "pretrain_tpu":
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the curves were not displayed"
