"""bert_jax/cli: every tool's --help lists its flags (console script and `python -m`), a user
error is one line with exit status 2 while any other error keeps its traceback, config paths
resolve inside the package, and the refusal of a workdir of another model names what differs."""
from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import inspect
import pathlib
import subprocess
import sys

import pytest
from train_helpers import REPO, env_for

import bert_jax
from bert_jax.cli import common
from bert_jax.errors import ConfigError

BIN = pathlib.Path(sys.executable).parent
# tool module -> (console script, flags its --help must list with a piece of their help text).
TOOLS = {
    "pretrain": ("bert-jax-pretrain", {"--config": "configs/pretrain.py:VARIANT",
                                       "--workdir": "checkpoints, metrics",
                                       "--coordinator_address": "host:port of process 0"}),
    "finetune": ("bert-jax-finetune", {"--config": "configs/finetune.py:task=NAME",
                                       "--workdir": "WORKDIR/best",
                                       "--num_processes": "Number of processes"}),
    "prepare": ("bert-jax-prepare", {"--input": "Text files, folders or globs",
                                     "--output_dir": "Dataset folder to create",
                                     "--vocab": "WordPiece vocab.txt", "--engine": "Apache Beam",
                                     "--whole_word_segmenter": "Segment each sentence into words",
                                     "--max_unk_rate": "Refuse a vocabulary"}),
    "vocab": ("bert-jax-vocab", {"--input": "Text files or globs", "--output": "vocab.txt",
                                 "--kind": "Vocabulary type", "--vocab_size": "Vocabulary size"}),
    "predict": ("bert-jax-predict", {"--checkpoint": "fine-tuned bert_jax model directory",
                                     "--input": "Rows to predict", "--output": "one JSON object",
                                     "--text_column": "override the text column"}),
    "convert": ("bert-jax-convert", {"--src": "Hugging Face folder or TF1 checkpoint",
                                     "--dst": "Output directory", "--to": "Output format",
                                     "--[no]overwrite": "Replace an existing destination"}),
    "embed": ("bert-jax-embed", {"--checkpoint": "HF folder", "--input": "one text per line",
                                 "--pooling": "pooling, else mean",
                                 "--normalize": "L2-normalise"}),
    "fill_mask": ("bert-jax-fill-mask", {"--checkpoint": "masked-LM head",
                                         "--top_k": "Candidates per [MASK]",
                                         "--[no]json": "one JSON object per text"}),
    "aot": ("bert-jax-aot", {"--config": "configs/pretrain.py:VARIANT",
                             "--topology": "TPU topology", "--batch_per_chip": "train.batch_size",
                             "--[no]force": "analytical estimate"}),
    "explain": ("bert-jax-explain", {"--checkpoint": "classification or NER model directory",
                                     "--input": "Texts to explain", "--output": "HTML pages",
                                     "--baseline": "Integrated-gradients baseline",
                                     "--steps": "Gauss-Legendre steps"}),
    "demo": ("bert-jax-demo", {"--workdir": "data, checkpoints and results",
                               "--doc_lines": "Bible verses per document",
                               "--config": "Pretraining config",
                               "--lang": "zh: Chinese"}),
}


def _help_lists_the_flags(proc, flags):
  assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl exits 1 after --help
  out = " ".join(proc.stdout.split())  # absl wraps help text at 80 columns
  for flag, text in {**flags, "--[no]verbose": "Show full tracebacks"}.items():
    assert f"{flag}:" in out, (flag, proc.stdout)
    assert text in out, (text, proc.stdout)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_console_script_help_lists_the_tools_flags(tool, tmp_path):
  script, flags = TOOLS[tool]
  proc = subprocess.run([str(BIN / script), "--help"], cwd=tmp_path, env=env_for(1),
                        capture_output=True, text=True, timeout=120)
  _help_lists_the_flags(proc, flags)
  doc = ast.get_docstring(ast.parse((REPO / "bert_jax" / "cli" / f"{tool}.py").read_text()))
  assert " ".join(doc.split()[:6]) in " ".join(proc.stdout.split()), proc.stdout  # what it does


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_python_m_help_lists_the_tools_flags(tool):
  proc = subprocess.run([sys.executable, "-m", f"bert_jax.cli.{tool}", "--help"], cwd=REPO,
                        env=env_for(1), capture_output=True, text=True, timeout=120)
  _help_lists_the_flags(proc, TOOLS[tool][1])


def test_every_tool_has_a_console_script():
  scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
             if ep.value.startswith("bert_jax.")}
  assert scripts == {script: f"bert_jax.cli.{tool}:run" for tool, (script, _) in TOOLS.items()}
  modules = {p.stem for p in (REPO / "bert_jax" / "cli").glob("*.py")} - {"__init__", "common"}
  assert modules == set(TOOLS)


def test_embed_and_fill_mask_are_plain_functions():
  assert inspect.isfunction(bert_jax.embed) and inspect.isfunction(bert_jax.fill_mask)
  assert bert_jax.embed.__module__ == "bert_jax.sentence_embedding"
  assert bert_jax.fill_mask.__module__ == "bert_jax.mask_filling"


# ----------------------------------------------------------------------------- errors
def test_guarded_turns_a_user_error_into_one_line_and_exit_2(capsys):
  def bad_flag():
    raise ConfigError("optimizer.learning_rate must be positive, got -1.\nsecond line")
  with pytest.raises(SystemExit) as e:
    common.guarded(bad_flag)
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: optimizer.learning_rate must be positive, got -1.\n"


@pytest.mark.parametrize("error", [RuntimeError("RESOURCE_EXHAUSTED: Out of memory"),
                                   KeyError("params"), ValueError("a bug"),
                                   FileNotFoundError("/tmp/x")])
def test_guarded_lets_any_other_error_through(error):
  def broken():
    raise error
  with pytest.raises(type(error)):
    common.guarded(broken)


# Runs bert-jax-convert with the reading of the source failing deep inside, as an XLA
# out-of-memory error or a bug would.
_CONVERT_WITH_A_FAILURE_INSIDE = """
import sys
from bert_jax import convert
from bert_jax.cli import convert as convert_cli
def read_any(path):
  raise RuntimeError("RESOURCE_EXHAUSTED: injected failure")
convert.read_any = read_any
sys.argv = ["bert-jax-convert"] + sys.argv[1:]
convert_cli.run()
"""


def test_a_real_error_keeps_its_traceback(tmp_path):
  src = REPO / "tests" / "data"
  proc = subprocess.run([sys.executable, "-c", _CONVERT_WITH_A_FAILURE_INSIDE, f"--src={src}",
                         f"--dst={tmp_path / 'out'}"], cwd=REPO, env=env_for(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode not in (0, 2), proc.stderr[-2000:]
  assert "Traceback" in proc.stderr and "in read_any" in proc.stderr, proc.stderr[-2000:]
  assert "RuntimeError: RESOURCE_EXHAUSTED: injected failure" in proc.stderr
  assert "error: RESOURCE" not in proc.stderr  # not dressed up as a user error


def test_a_user_error_is_one_line_without_traceback(tmp_path):
  proc = subprocess.run([str(BIN / "bert-jax-convert"), f"--src={tmp_path / 'missing'}",
                         f"--dst={tmp_path / 'out'}"], cwd=tmp_path, env=env_for(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: Source {tmp_path / 'missing'}")
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- config paths
@pytest.mark.parametrize("given,want", [
    ("configs/pretrain.py:tiny", "pretrain.py:tiny"),
    ("bert_jax/configs/finetune.py:task=ner,tiny", "finetune.py:task=ner,tiny"),
    ("./configs/pretrain.py", "pretrain.py"),
])
def test_config_paths_resolve_inside_the_package(tmp_path, monkeypatch, given, want):
  monkeypatch.chdir(tmp_path)  # Not a checkout: no configs/ here.
  got = common.resolve_config_path(given)
  assert got == f"{REPO / 'bert_jax' / 'configs'}/{want}"
  assert pathlib.Path(got.split(":")[0]).is_file()


def test_config_paths_that_exist_or_are_not_package_configs_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "pretrain.py").write_text("def get_config(arg=None): return None\n")
  for given in ("configs/pretrain.py:tiny", "my/pretrain.py:base", "configs/nope.py:x",
                "/abs/configs/pretrain.py"):
    assert common.resolve_config_path(given) == given


def test_a_tool_finds_the_package_config_from_another_directory(tmp_path):
  # Refused only after the config loaded: the topology is what is wrong, not the path.
  proc = subprocess.run([str(BIN / "bert-jax-aot"), "--config=bert_jax/configs/pretrain.py:tiny",
                         "--topology=v9:2x2"], cwd=tmp_path, env=env_for(1),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "v9:2x2" in last, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- messages
def test_workdir_of_another_model_names_only_the_fields_that_differ():
  from bert_jax import train
  old = {"bert_config": dataclasses.asdict(bert_jax.preset("base")), "vocab_fingerprint": "ab12",
         "task": "pretraining"}
  new = {**old, "bert_config": dataclasses.asdict(bert_jax.preset("base", hidden_size=960))}
  msg = train._diff(old, new)  # noqa: SLF001
  assert msg == "bert_config.hidden_size: 768 vs 960", msg
  other_task = train._diff(old, {**new, "task": "classification"})  # noqa: SLF001
  assert other_task == ("bert_config.hidden_size: 768 vs 960; task: 'pretraining' vs "
                        "'classification'"), other_task
  assert train._diff(None, new) == "no identity recorded"  # noqa: SLF001
