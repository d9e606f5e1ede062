"""ModernBERT: parity with transformers 5 on real text, exact HF round trips, refusals.

The HF models are randomly initialised here (no released weights can be downloaded), then every
parameter is perturbed so that norms, biases and the decoder bias are not at their trivial
initial values, and saved with save_pretrained. Text: Moby-Dick sentences of mixed length,
tokenised with the bert-base-uncased vocab, in padded batches. Run with -s to see the figures.
"""
from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from bert_jax import model_dir
from bert_jax import modern_convert as mc
from bert_jax import modern_modeling as mm
from bert_jax.errors import ConfigError, ModelFileError
from bert_jax.layers import LOGICAL_AXES_KEY
from bert_jax.modern_configuration import PRESETS, ModernBertConfig, preset
from tests.conftest import RESOURCES, TESTDATA

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 2e-5
PAD, CLS, SEP, VOCAB = 0, 101, 102, 30522

# Each shape: local window shorter than the rows, global every 2 / 3 layers, odd head counts,
# cls and mean pooling, with and without biases, both HF attention paths.
SHAPES = {
    "odd_heads_every2_cls": dict(
        hidden_size=48, intermediate_size=40, num_hidden_layers=4, num_attention_heads=3,
        global_attn_every_n_layers=2, local_attention=8, classifier_pooling="cls",
        attn_implementation="eager"),
    "biases_every3_mean": dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
        global_attn_every_n_layers=3, local_attention=16, classifier_pooling="mean",
        norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True,
        attn_implementation="sdpa"),
    "five_heads_silu_thetas_nodecoderbias": dict(
        hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=5,
        global_attn_every_n_layers=3, local_attention=4, classifier_pooling="mean",
        hidden_activation="silu", classifier_activation="gelu_pytorch_tanh", decoder_bias=False,
        global_rope_theta=50000.0, local_rope_theta=500.0, attn_implementation="eager"),
}
HEADS = ("ModernBertForMaskedLM", "ModernBertForSequenceClassification",
         "ModernBertForTokenClassification", "ModernBertForQuestionAnswering", "ModernBertModel")
NUM_LABELS = {"ModernBertForTokenClassification": 5, "ModernBertForQuestionAnswering": 2}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def batch():
  """Real sentences of mixed length as a padded [B, L] batch ([CLS] ... [SEP], right padding)."""
  from tokenizers import BertWordPieceTokenizer
  tok = BertWordPieceTokenizer(str(RESOURCES / "bert-base-uncased-vocab.txt"), lowercase=True)
  text = (TESTDATA / "mobydick.en.txt").read_text(encoding="utf-8-sig")
  body = " ".join(text[text.index("CHAPTER 1. Loomings."):][:20000].split())
  sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if len(s.split()) >= 3]
  by_len = sorted(sentences, key=len)
  picks = [by_len[i] for i in (5, len(by_len) // 4, len(by_len) // 2, -40, -2)]
  encs = tok.encode_batch(picks)
  ids = [e.ids[:48] for e in encs]
  unk = sum(i == tok.token_to_id("[UNK]") for row in ids for i in row)
  assert unk <= 2, f"{unk} [UNK] tokens: the vocab does not fit the text"
  width = max(map(len, ids))
  input_ids = np.full((len(ids), width), PAD, np.int64)
  mask = np.zeros_like(input_ids)
  for r, row in enumerate(ids):
    input_ids[r, :len(row)], mask[r, :len(row)] = row, 1
  assert input_ids[:, 0].tolist() == [CLS] * len(ids)
  assert len(set(mask.sum(1).tolist())) == len(ids) and mask.sum(1).min() < 12 < width
  return input_ids, mask


def _hf_config(shape: dict, num_labels: int = 3):
  kw = {k: v for k, v in shape.items() if k != "attn_implementation"}
  return transformers.ModernBertConfig(
      vocab_size=VOCAB, pad_token_id=PAD, cls_token_id=CLS, sep_token_id=SEP, bos_token_id=CLS,
      eos_token_id=SEP, num_labels=num_labels, max_position_embeddings=128, **kw)


def _hf_model(arch: str, shape: dict, seed: int, num_labels: int = 3):
  torch.manual_seed(seed)
  cfg = _hf_config(shape, num_labels)
  model = getattr(transformers, arch)._from_config(
      cfg, attn_implementation=shape["attn_implementation"]).eval()
  with torch.no_grad():  # Move norms, biases and all weights off their initial values.
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
      scale = 0.1 if p.ndim == 1 else 0.02
      p.add_(torch.randn(p.shape, generator=gen) * scale)
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """{(shape, arch): (hf_model, folder)} saved with save_pretrained (built on first use)."""
  cache = {}

  def get(shape_name: str, arch: str):
    if (shape_name, arch) not in cache:
      num_labels = NUM_LABELS.get(arch, 3)
      seed = sorted(SHAPES).index(shape_name) * 10 + HEADS.index(arch)
      model = _hf_model(arch, SHAPES[shape_name], seed, num_labels)
      folder = tmp_path_factory.mktemp(f"{shape_name}-{arch}")
      model.save_pretrained(folder)
      cache[shape_name, arch] = (model, folder)
    return cache[shape_name, arch]

  return get


def _torch(x):
  return torch.from_numpy(np.asarray(x, np.int64))


def _max_diff(a, b, mask=None):
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return float(d[mask.astype(bool)].max() if mask is not None else d.max())


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_parity_with_transformers(shape_name, saved, batch):
  """last_hidden_state (real tokens), MLM, classification, NER and QA logits within 2e-5 (f32)."""
  input_ids, mask = batch
  figures = {}

  hf, folder = saved(shape_name, "ModernBertForMaskedLM")
  conv = mc.read_hf_folder(folder)
  assert conv.architecture == "ModernBertForMaskedLM" and not conv.ignored
  model = mc.build_model(conv)
  with torch.no_grad():
    ref_h = hf.model(input_ids=_torch(input_ids), attention_mask=_torch(mask)).last_hidden_state
    ref_logits = hf(input_ids=_torch(input_ids), attention_mask=_torch(mask)).logits
    # HF pads (no unpadding on eager/sdpa): each row alone must give what it gives in the batch,
    # so the comparison does not depend on HF's padding path.
    for r in range(len(input_ids)):
      n = int(mask[r].sum())
      alone = hf.model(input_ids=_torch(input_ids[r:r + 1, :n])).last_hidden_state
      assert _max_diff(alone[0], ref_h[r, :n]) < 1e-5
  out = model.model(input_ids, mask, output_hidden_states=True)
  figures["hidden"] = _max_diff(out.last_hidden_state, ref_h.numpy(), mask)
  with torch.no_grad():
    ref_all = hf.model(input_ids=_torch(input_ids), attention_mask=_torch(mask),
                       output_hidden_states=True).hidden_states
  assert len(out.hidden_states) == len(ref_all) == hf.config.num_hidden_layers + 1
  figures["all_layers"] = max(_max_diff(a, b.numpy(), mask)
                              for a, b in zip(out.hidden_states, ref_all, strict=True))
  jit_logits = nnx.jit(lambda m, i, a: m(i, a))(model, input_ids, mask)
  figures["mlm"] = _max_diff(jit_logits, ref_logits.numpy(), mask)

  for arch, key in (("ModernBertForSequenceClassification", "seq_cls"),
                    ("ModernBertForTokenClassification", "tok_cls")):
    hf, folder = saved(shape_name, arch)
    conv = mc.read_hf_folder(folder)
    assert conv.architecture == arch and conv.num_labels == hf.config.num_labels
    with torch.no_grad():
      ref = hf(input_ids=_torch(input_ids), attention_mask=_torch(mask)).logits.numpy()
    got = np.asarray(mc.build_model(conv)(input_ids, mask))
    figures[key] = _max_diff(got, ref, mask if ref.ndim == 3 else None)

  hf, folder = saved(shape_name, "ModernBertForQuestionAnswering")
  with torch.no_grad():
    ref = hf(input_ids=_torch(input_ids), attention_mask=_torch(mask))
  start, end = mc.build_model(mc.read_hf_folder(folder))(input_ids, mask)
  figures["qa"] = max(_max_diff(start, ref.start_logits.numpy(), mask),
                      _max_diff(end, ref.end_logits.numpy(), mask))

  print(f"\n[modern parity] {shape_name}: " + ", ".join(f"{k} {v:.2e}" for k, v in
                                                      figures.items()))
  assert max(figures.values()) < TOL, figures


# ------------------------------------------------------------------ exact round trips
@pytest.mark.parametrize("arch", HEADS)
@pytest.mark.parametrize("shape_name", sorted(SHAPES)[:2])
def test_hf_to_bert_jax_to_hf_is_bitwise(shape_name, arch, saved, tmp_path):
  hf, folder = saved(shape_name, arch)
  conv = mc.read_hf_folder(folder)
  assert conv.architecture == arch
  # Through the nnx module too, not only the flat dict.
  again = mc.from_model(mc.build_model(conv), arch, conv.label_names)
  out = mc.write_hf_folder(tmp_path / "hf", again)

  original, written = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
  assert sorted(written) == sorted(original)
  for k, v in original.items():
    assert written[k].dtype == v.dtype and np.array_equal(written[k], v), k

  cls = getattr(transformers, arch)
  back, info = cls.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  ref_state, back_state = hf.state_dict(), back.state_dict()
  assert sorted(ref_state) == sorted(back_state)
  for k, v in ref_state.items():
    assert torch.equal(v, back_state[k]), k
  for key in ("layer_types", "rope_parameters", "sliding_window", "hidden_activation",
              "classifier_pooling", "norm_bias", "attention_bias", "mlp_bias", "decoder_bias"):
    assert getattr(back.config, key) == getattr(hf.config, key), key
  if arch in ("ModernBertForSequenceClassification", "ModernBertForTokenClassification"):
    assert back.config.id2label == hf.config.id2label


@pytest.mark.parametrize("name", ["modern_base", "modern_large"])
def test_preset_parameters_match_transformers(name):
  """Every tensor of the preset's HF ModernBertForMaskedLM (built on the meta device) maps onto
  a bert_jax parameter of the same size, and nothing is left over."""
  cfg = preset(name)
  with torch.device("meta"):
    hf = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig.from_dict(
        cfg.to_hf_dict()))
  hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "decoder.weight"}
  abstract = nnx.eval_shape(lambda: mm.ModernBertForMaskedLM(cfg, rngs=nnx.Rngs(0)))
  ours = {k: tuple(v.shape) for k, v in model_dir.flatten(
      nnx.state(abstract, nnx.Param).to_pure_dict()).items()}
  assert sorted(mc.jax_to_hf_name(k) for k in ours) == sorted(hf_shapes)
  for k, shape in ours.items():
    like = np.broadcast_to(np.float32(0), hf_shapes[mc.jax_to_hf_name(k)])
    assert mc.to_jax_array(k, like, cfg).shape == shape, k
  total = sum(int(np.prod(s)) for s in ours.values())
  print(f"\n[modern params] {name}: {total:,} parameters (MLM model)")
  assert total == sum(int(np.prod(s)) for s in hf_shapes.values())


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("change, option", [
    ({"hidden_activation": "quick_gelu"}, "hidden_activation"),
    ({"classifier_activation": "gelu_fast"}, "classifier_activation"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0,
                                             "rope_theta": 160000.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "rope_type"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"norm_type": "rmsnorm"}, "norm_type"),
    ({"classifier_pooling": "max"}, "classifier_pooling"),
    ({"model_type": "bert"}, "model_type"),
])
def test_unsupported_hf_option_is_refused(change, option, saved, tmp_path):
  _, folder = saved(sorted(SHAPES)[0], "ModernBertForMaskedLM")
  bad = tmp_path / "bad"
  bad.mkdir()
  cfg = json.loads((folder / "config.json").read_text())
  cfg.update(change)
  (bad / "config.json").write_text(json.dumps(cfg))
  (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
  with pytest.raises(ModelFileError) as e:
    mc.read_hf_folder(bad)
  msg = str(e.value)
  assert option in msg and "\n" not in msg and msg.count(". ") == 0, msg
  assert sorted(p.name for p in bad.iterdir()) == ["config.json", "model.safetensors"]


def test_untied_decoder_and_bad_shapes_are_refused(saved, tmp_path):
  from safetensors.numpy import save_file
  _, folder = saved(sorted(SHAPES)[0], "ModernBertForMaskedLM")
  tensors = load_file(folder / "model.safetensors")
  bad = tmp_path / "untied"
  bad.mkdir()
  (bad / "config.json").write_text((folder / "config.json").read_text())
  emb = tensors["model.embeddings.tok_embeddings.weight"]
  save_file({**tensors, "decoder.weight": emb + 1}, str(bad / "model.safetensors"))
  with pytest.raises(ModelFileError, match="decoder.weight"):
    mc.read_hf_folder(bad)
  save_file({**tensors, "head.dense.weight": tensors["head.dense.weight"][:, :-1]},
            str(bad / "model.safetensors"))
  with pytest.raises(ModelFileError, match="head.dense.weight"):
    mc.read_hf_folder(bad)
  del tensors["model.final_norm.weight"]
  save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(ModelFileError, match="final_norm"):
    mc.read_hf_folder(bad)
  with pytest.raises(ModelFileError, match="already holds files"):
    mc.write_hf_folder(bad, mc.read_hf_folder(folder))


# ------------------------------------------------------------------ config
def test_config_reads_both_hf_spellings_and_presets():
  # transformers 4 (the released files) and transformers 5 spellings of ModernBERT-base.
  released = {"model_type": "modernbert", "global_attn_every_n_layers": 3,
              "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "local_attention": 128,
              "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22,
              "num_attention_heads": 12, "position_embedding_type": "absolute",
              "reference_compile": True}
  v5 = transformers.ModernBertConfig().to_dict()
  assert ModernBertConfig.from_dict(released) == PRESETS["modern_base"]
  assert ModernBertConfig.from_dict(v5) == PRESETS["modern_base"]
  large = preset("modern_large")
  assert (large.num_hidden_layers, large.hidden_size, large.intermediate_size,
          large.num_attention_heads) == (28, 1024, 2624, 16)
  # transformers 5 reads what bert_jax writes back the same way.
  hf = transformers.ModernBertConfig.from_dict(large.to_hf_dict())
  assert hf.layer_types == list(large.resolved_layer_types) and hf.sliding_window == 64
  assert hf.rope_parameters["full_attention"]["rope_theta"] == 160000.0
  # A non-periodic layer pattern is kept as a list.
  odd = dict(released, num_hidden_layers=3,
             layer_types=["full_attention", "full_attention", "sliding_attention"])
  del odd["global_attn_every_n_layers"]
  cfg = ModernBertConfig.from_dict(odd)
  assert [cfg.is_global(i) for i in range(3)] == [True, True, False]
  assert ModernBertConfig.from_dict(cfg.to_dict()) == cfg


def test_config_json_round_trip_and_errors(tmp_path):
  cfg = preset("modern_tiny", classifier_pooling="mean", norm_bias=True)
  cfg.to_json(tmp_path / "config.json")
  assert ModernBertConfig.from_json(tmp_path / "config.json") == cfg
  with pytest.raises(ConfigError, match="hidden_activation"):
    preset("modern_tiny", hidden_activation="quick_gelu")
  with pytest.raises(ConfigError, match="divisible"):
    preset("modern_tiny", num_attention_heads=3)
  with pytest.raises(ConfigError, match="preset"):
    preset("modern_huge")


# ------------------------------------------------------------------ the module itself
def test_logical_axes_dropout_and_window():
  cfg = preset("modern_tiny", vocab_size=500, embedding_dropout=0.1, mlp_dropout=0.1,
               attention_dropout=0.1, classifier_dropout=0.1)
  model = mm.create_model(mm.ModernBertForSequenceClassification, cfg, num_labels=2)
  state = nnx.state(model, nnx.Param)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  vocab = {None, "embed", "mlp", "heads", "kv", "vocab", "hidden", "classes"}
  for v in leaves:
    axes = v.get_metadata().get(LOGICAL_AXES_KEY)
    assert axes is not None and len(axes) == v.ndim and set(axes) <= vocab, (v.shape, axes)
  ids = np.random.RandomState(0).randint(1, 500, (2, 40))
  eval_logits = model(ids)
  assert np.array_equal(eval_logits, model(ids))
  train = [model(ids, dropout_rng=jax.random.key(s)) for s in (1, 1, 2)]
  assert np.array_equal(train[0], train[1]) and not np.array_equal(train[0], train[2])
  assert not np.array_equal(train[0], eval_logits)
  # The local window: a local-only model (no global layer sees position 0 from position 39
  # beyond half-window hops) gives position 0 a result independent of far tokens.
  local = preset("modern_tiny", vocab_size=500, num_hidden_layers=2, layer_types=(
      "sliding_attention", "sliding_attention"))
  enc = mm.create_model(mm.ModernBertModel, local)
  changed = ids.copy()
  changed[:, 30:] = 7
  a, b = enc(ids).last_hidden_state, enc(changed).last_hidden_state
  reach = 2 * local.sliding_window  # Two local layers reach 2 half-windows.
  assert np.array_equal(a[:, :30 - reach], b[:, :30 - reach])
  assert not np.array_equal(a[:, 30 - reach:30], b[:, 30 - reach:30])
  with pytest.raises(ValueError, match="max_position_embeddings"):
    enc(np.ones((1, local.max_position_embeddings + 1), np.int32))


def test_remat_gives_the_same_gradients():
  cfg = preset("modern_tiny", vocab_size=300, mlp_dropout=0.1, attention_dropout=0.1)
  ids = np.random.RandomState(1).randint(1, 300, (2, 24))
  mask = np.ones_like(ids)
  mask[1, 15:] = 0

  def grads(remat):
    model = mm.create_model(mm.ModernBertForMaskedLM, cfg.replace(remat=remat), seed=3)
    loss = lambda m: (m(ids, mask, dropout_rng=jax.random.key(0)) ** 2).mean()  # noqa: E731
    return jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param))

  plain, remat = grads(False), grads(True)
  for a, b in zip(plain, remat, strict=True):
    assert np.all(np.isfinite(a)) and np.allclose(a, b, atol=1e-6, rtol=1e-5)
