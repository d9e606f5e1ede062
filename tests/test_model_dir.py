"""The bert_jax model directory: round trips, atomic writes, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bert_jax
from bert_jax import heads, loading, model_dir, modeling
from bert_jax.modeling import create_model
from bert_jax.tokenization import Tokenizer

CONFIG = bert_jax.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=32)
IDS = np.array([[2, 5, 9, 11, 3, 0], [2, 7, 7, 3, 0, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)


def _params_equal(a, b):
  fa, fb = model_dir.model_params(a), model_dir.model_params(b)
  return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_save_and_load_round_trip(tmp_path, vocab_path):
  model = create_model(heads.BertForPreTraining, CONFIG, seed=1)
  tok = Tokenizer.from_vocab(vocab_path)
  model_dir.save_model_dir(tmp_path / "m", model, tok, extra_info={"step": 7})
  assert model_dir.is_model_dir(tmp_path / "m")
  config, info, params = model_dir.read_model_dir(tmp_path / "m")
  assert config == CONFIG
  assert info["format"] == "bert_jax" and info["format_version"] == 1
  assert info["architecture"] == "BertForPreTraining" and info["step"] == 7
  layer0 = params["bert"]["encoder"]["layer"]["0"]  # nnx.List indices are stored as strings.
  assert layer0["attention"]["self"]["query"]["kernel"].shape == (32, 4, 8)
  assert all(v.dtype == np.float32 for v in model_dir.flatten(params).values())
  loaded = loading.load_model(tmp_path / "m")
  assert isinstance(loaded, heads.BertForPreTraining) and _params_equal(loaded, model)
  np.testing.assert_array_equal(loaded(IDS, MASK).mlm_logits, model(IDS, MASK).mlm_logits)
  assert Tokenizer.from_dir(tmp_path / "m").fingerprint == tok.fingerprint


def test_bf16_params_are_written_as_f32(tmp_path):
  model = create_model(modeling.BertModel, CONFIG.replace(param_dtype="bfloat16"))
  model_dir.save_model_dir(tmp_path / "m", model)
  _, _, params = model_dir.read_model_dir(tmp_path / "m")
  word = params["embeddings"]["word_embeddings"]["embedding"]
  assert word.dtype == np.float32
  np.testing.assert_array_equal(word, np.asarray(
      model.embeddings.word_embeddings.embedding[...]).astype(np.float32))


def test_refuses_existing_directory_and_overwrites(tmp_path):
  model = create_model(modeling.BertModel, CONFIG, seed=1)
  model_dir.save_model_dir(tmp_path / "m", model)
  before = sorted(p.name for p in (tmp_path / "m").iterdir())
  other = create_model(modeling.BertModel, CONFIG, seed=2)
  with pytest.raises(FileExistsError, match="overwrite"):
    model_dir.save_model_dir(tmp_path / "m", other)
  assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
  assert _params_equal(loading.load_model(tmp_path / "m"), model)
  model_dir.save_model_dir(tmp_path / "m", other, overwrite=True)
  assert _params_equal(loading.load_model(tmp_path / "m"), other)
  assert [p.name for p in tmp_path.iterdir()] == ["m"]  # No temporary directories left.


def test_failed_write_leaves_nothing(tmp_path):
  class BrokenTokenizer:
    def save(self, directory):
      raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    model_dir.save_model_dir(tmp_path / "m", create_model(modeling.BertModel, CONFIG),
                            BrokenTokenizer())
  assert list(tmp_path.iterdir()) == []


def test_read_rejects_other_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="bert_jax.convert"):
    model_dir.read_model_dir(tmp_path)
  (tmp_path / "model_info.json").write_text(json.dumps({"format": "other"}))
  assert not model_dir.is_model_dir(tmp_path)


_TWO_PROCESS_SCRIPT = """
import sys
import jax
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid, initialization_timeout=60)
import numpy as np
from jax.experimental import multihost_utils
from bert_jax import loading, model_dir, modeling
from bert_jax.configuration import BertConfig
cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=16)
model = modeling.BertModel(cfg, rngs=__import__("flax").nnx.Rngs(params=1))
if pid == 0:
  model_dir.save_model_dir(out, model)  # Process 0 alone, as a trainer does.
multihost_utils.sync_global_devices("saved")
again = loading.load_model(out)
a, b = model_dir.model_params(model), model_dir.model_params(again)
print("OK" if all(np.array_equal(a[k], b[k]) for k in a) else "DIFFERENT")
"""


def test_process_zero_alone_saves_in_a_two_process_job(tmp_path):
  import os
  import socket
  import subprocess
  import sys

  from tests.conftest import REPO
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(i), str(port),
                             str(tmp_path / "m")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0 and out.strip().endswith("OK"), out[-2000:]


def test_atomic_write_dir_gives_the_folder_mkdir_would(tmp_path):
  """Not mkdtemp's private 0700: a written model or page folder is as readable as any folder."""
  model_dir.atomic_write_dir(tmp_path / "out", lambda d: (d / "f.txt").write_text("x"))
  (tmp_path / "plain").mkdir()
  assert (tmp_path / "out").stat().st_mode == (tmp_path / "plain").stat().st_mode
