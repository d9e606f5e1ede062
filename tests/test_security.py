"""No pickle, code execution or network when converting, loading or checkpointing: pickle.load(s)
is never called, torch.load only with weights_only=True (for pytorch_model.bin), and sockets are
never opened. A pytorch_model.bin carrying code is refused unread (tests/test_bad_input.py)."""
from __future__ import annotations

import pickle
import socket

import jax.numpy as jnp
import numpy as np
import pytest

TINY = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64)


@pytest.fixture
def watched(monkeypatch):
  """Records pickle, torch.load and network calls made inside the test."""
  calls = []

  def forbid(name):
    def f(*args, **kwargs):
      calls.append(name)
      raise AssertionError(f"{name} called")
    return f

  monkeypatch.setattr(pickle, "load", forbid("pickle.load"))
  monkeypatch.setattr(pickle, "loads", forbid("pickle.loads"))
  monkeypatch.setattr(socket.socket, "connect", forbid("socket.connect"))
  monkeypatch.setattr(socket, "create_connection", forbid("socket.create_connection"))
  monkeypatch.setattr(socket, "getaddrinfo", forbid("socket.getaddrinfo"))
  try:
    import torch
    real = torch.load

    def load(*args, **kwargs):
      calls.append(f"torch.load(weights_only={kwargs.get('weights_only')})")
      return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", load)
  except ImportError:
    pass
  return calls


def _hf_folder(tmp_path):
  import bert_jax
  from bert_jax.configuration import BertConfig
  from bert_jax.modeling import create_model
  model = create_model(bert_jax.BertModel, BertConfig(**TINY))
  return bert_jax.save_pretrained(model, None, tmp_path / "hf", format="hf"), model


def test_convert_and_load_use_no_pickle_and_no_network(tmp_path, watched):
  import bert_jax
  from bert_jax import convert, model_dir
  hf, model = _hf_folder(tmp_path)
  convert.convert(hf, tmp_path / "bj")  # safetensors -> bert_jax (orbax + JSON)
  convert.convert(tmp_path / "bj", tmp_path / "hf2", to="hf")
  model_dir.read_model_dir(tmp_path / "bj")
  loaded = bert_jax.BertModel.from_pretrained(tmp_path / "bj")
  bert_jax.BertModel.from_pretrained(tmp_path / "hf2")
  ids = np.array([[101, 7, 8, 102]], np.int32)
  np.testing.assert_array_equal(np.asarray(loaded(ids)[0]), np.asarray(model(ids)[0]))
  assert watched == []


def test_pytorch_bin_is_read_with_weights_only(tmp_path, watched):
  torch = pytest.importorskip("torch")
  from safetensors.numpy import load_file

  from bert_jax import convert
  hf, _ = _hf_folder(tmp_path)
  state = {k: torch.from_numpy(v) for k, v in load_file(str(hf / "model.safetensors")).items()}
  (hf / "model.safetensors").unlink()
  torch.save(state, hf / "pytorch_model.bin")
  conv = convert.read_any(hf)
  assert conv.params and watched == ["torch.load(weights_only=True)"]


def test_training_checkpoints_are_json_and_arrays_only(tmp_path, watched):
  import jax

  from bert_jax import checkpoint
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
  cp = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  cp.save(3, state, {"shards": {"0": {"pos": 1}}}, {"config": {"init_from": "rm -rf /"}})
  cp.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored, data, meta = cp.restore(3, abstract)
  cp.close()
  assert np.array_equal(restored["w"], state["w"]) and data == {"shards": {"0": {"pos": 1}}}
  assert meta["config"]["init_from"] == "rm -rf /"  # A config string is data, never executed.
  assert watched == []
