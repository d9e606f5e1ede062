"""loading.py: from_pretrained / load_model / save_pretrained / build_model / merge_params on the
real MiniLM folder and tiny random models; every loader returns the pretrained.py classes."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax import convert, errors, heads, loading, model_dir, modeling, pretrained
from bert_jax.modeling import create_model

CONFIG = bert_jax.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=32)
IDS = np.array([[2, 5, 9, 11, 3, 0], [2, 7, 7, 3, 0, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)


def test_from_pretrained_hf_and_bert_jax_agree(tmp_path, minilm_dir):
  model, tok = bert_jax.from_pretrained(minilm_dir)
  assert isinstance(model, modeling.BertModel) and tok.do_lower_case
  enc = tok(["A man is eating food.", "Call me Ishmael. Some years ago, never mind how long."])
  ref = model(**enc)
  bert_jax.save_pretrained(model, tok, tmp_path / "bj")
  again, tok2 = bert_jax.from_pretrained(tmp_path / "bj")
  assert tok2.fingerprint == tok.fingerprint
  np.testing.assert_array_equal(again(**enc).last_hidden_state, ref.last_hidden_state)
  bert_jax.save_pretrained(again, tok2, tmp_path / "hf", format="hf")
  third, _ = bert_jax.from_pretrained(tmp_path / "hf")
  np.testing.assert_array_equal(third(**enc).pooler_output, ref.pooler_output)
  with pytest.raises(FileExistsError):
    bert_jax.save_pretrained(model, tok, tmp_path / "hf", format="hf")
  with pytest.raises(ValueError, match="format"):
    bert_jax.save_pretrained(model, tok, tmp_path / "x", format="onnx")


def test_from_pretrained_options(minilm_dir):
  clf, _ = bert_jax.from_pretrained(minilm_dir, cls=heads.BertForSequenceClassification,
                                    num_labels=2)
  assert clf.num_labels == 2
  half, tok = bert_jax.from_pretrained(minilm_dir, dtype="bfloat16")
  full, _ = bert_jax.from_pretrained(minilm_dir)
  enc = tok("In the beginning God created the heavens and the earth.")
  a, b = half(**enc).last_hidden_state, full(**enc).last_hidden_state
  assert half.config.dtype == "bfloat16" and a.dtype == np.float32
  assert 0 < float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 0.1


def test_load_into_other_architectures_and_dtypes(tmp_path):
  model = create_model(heads.BertForPreTraining, CONFIG, seed=1)
  model_dir.save_model_dir(tmp_path / "m", model)
  encoder = loading.load_model(tmp_path / "m", modeling.BertModel)
  np.testing.assert_array_equal(encoder(IDS, MASK).last_hidden_state,
                                model.bert(IDS, MASK).last_hidden_state)
  clf = loading.load_model(tmp_path / "m", heads.BertForSequenceClassification, num_labels=3)
  assert clf(IDS, MASK).shape == (2, 3)
  np.testing.assert_array_equal(clf.bert(IDS, MASK).pooler_output,
                                model.bert(IDS, MASK).pooler_output)
  half = loading.load_model(tmp_path / "m", dtype="bfloat16", param_dtype=jnp.bfloat16)
  assert half.config.dtype == "bfloat16"
  assert half.bert.embeddings.word_embeddings.embedding[...].dtype == jnp.bfloat16
  # A BertModel directory loads into a head model's `bert`.
  model_dir.save_model_dir(tmp_path / "enc", encoder)
  clf2 = loading.load_model(tmp_path / "enc", heads.BertForTokenClassification, num_labels=5)
  np.testing.assert_array_equal(clf2.bert(IDS, MASK).last_hidden_state,
                                model.bert(IDS, MASK).last_hidden_state)


def test_merge_params_reports_and_checks_shapes(tmp_path):
  pre = create_model(heads.BertForPreTraining, CONFIG, seed=1)
  model_dir.save_model_dir(tmp_path / "m", pre)
  _, _, params = model_dir.read_model_dir(tmp_path / "m")
  clf = create_model(heads.BertForSequenceClassification, CONFIG, num_labels=2, seed=5)
  loaded, missing, unexpected = loading.merge_params(clf, params["bert"], prefix="bert")
  assert sorted(missing) == ["classifier.bias", "classifier.kernel"]
  assert unexpected == [] and len(loaded) == len(model_dir.flatten(params["bert"]))
  assert "bert.encoder.layer.1.output.dense.kernel" in loaded
  np.testing.assert_array_equal(clf.bert(IDS, MASK).pooler_output,
                                pre.bert(IDS, MASK).pooler_output)
  _, _, unexpected = loading.merge_params(create_model(heads.BertForMaskedLM, CONFIG), params)
  assert "seq_relationship.kernel" in unexpected and "bert.pooler.dense.kernel" in unexpected
  wider = create_model(modeling.BertModel, CONFIG.replace(intermediate_size=96))
  with pytest.raises(ValueError, match=r"layer\.0\.intermediate\.dense\.(bias|kernel).*96"):
    loading.merge_params(wider, params["bert"])


def test_every_loader_returns_the_pretrained_classes(tmp_path, minilm_dir, vocab_path):
  model = create_model(heads.BertForPreTraining, CONFIG, seed=1)
  model_dir.save_model_dir(tmp_path / "m", model, bert_jax.Tokenizer.from_vocab(vocab_path))
  loaded = bert_jax.load_model(tmp_path / "m")
  assert isinstance(loaded, bert_jax.BertForPreTraining)
  assert isinstance(loaded, heads.BertForPreTraining)  # Still the trainer's NNX module.
  np.testing.assert_array_equal(loaded(IDS, MASK).mlm_logits, model(IDS, MASK).mlm_logits)
  again = loaded.save_pretrained(tmp_path / "again")  # Every loaded model can save itself.
  assert isinstance(bert_jax.load_model(again), bert_jax.BertForPreTraining)
  # A modeling / heads class asked for gives its pretrained.py subclass.
  clf = bert_jax.load_model(tmp_path / "m", heads.BertForSequenceClassification, num_labels=2)
  assert type(clf) is bert_jax.BertForSequenceClassification and clf.num_labels == 2
  encoder, tok = bert_jax.from_pretrained(minilm_dir)
  assert type(encoder) is bert_jax.BertModel and isinstance(tok, bert_jax.BertTokenizer)
  conv = convert.read_any(minilm_dir)
  built = loading.build_model(conv.config, conv.info, conv.params, modeling.BertModel)
  assert type(built) is bert_jax.BertModel
  # load_model reads every source from_pretrained reads (here the HF folder).
  assert type(bert_jax.load_model(minilm_dir)) is bert_jax.BertModel


def test_unknown_architecture_and_missing_num_labels_are_user_errors(tmp_path):
  model_dir.save_model_dir(tmp_path / "m", create_model(modeling.BertModel, CONFIG),
                           extra_info={"architecture": "BertForNextWord"})
  with pytest.raises(errors.ModelFileError, match="Unknown architecture 'BertForNextWord'"):
    bert_jax.load_model(tmp_path / "m")
  with pytest.raises(errors.ConfigError, match="needs num_labels"):
    bert_jax.load_model(tmp_path / "m", bert_jax.BertForTokenClassification)
  assert pretrained.model_class("BertModel") is bert_jax.BertModel


def test_missing_source_is_a_value_and_file_not_found_error(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    bert_jax.from_pretrained(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    bert_jax.load_model(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.UserError, match="is not a bert_jax directory"):
    bert_jax.load_model(tmp_path / "empty")


def test_a_directory_written_before_the_split_still_loads(tmp_path):
  # The documented layout written without model_dir (as the old model_io.py wrote it).
  model = create_model(heads.BertForMaskedLM, CONFIG, seed=4)
  folder = tmp_path / "old"
  folder.mkdir()
  CONFIG.to_json(folder / "bert_config.json")
  (folder / "model_info.json").write_text(json.dumps(
      {"format": "bert_jax", "format_version": 1, "architecture": "BertForMaskedLM",
       "num_labels": None}))
  import orbax.checkpoint as ocp
  tree = model_dir.unflatten(model_dir.model_params(model))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(folder / "params", tree)
  checkpointer.wait_until_finished()
  loaded = bert_jax.load_model(folder)
  assert type(loaded) is bert_jax.BertForMaskedLM
  np.testing.assert_array_equal(loaded(IDS, MASK), model(IDS, MASK))


def test_flatten_matches_the_nested_tree():
  tree = {"a": {0: {"b": 1}, "1": {"c": 2}}, "d": 3}
  flat = model_dir.flatten(tree)
  assert flat == {"a.0.b": 1, "a.1.c": 2, "d": 3}
  assert model_dir.flatten(flat) == flat
  assert model_dir.unflatten(flat) == {"a": {"0": {"b": 1}, "1": {"c": 2}}, "d": 3}
