"""The seq2seq task on real KJV -> WEB pairs: reading, encoding, loss, scores, two train steps
with predict, and bad input (one sentence, nothing written)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import bible_pairs, finetune, predict
from bert_jax.configs import finetune as finetune_configs
from bert_jax.errors import DataError, UserError
from bert_jax.tasks import seq2seq
from bert_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def pairs():
  """Ruth 1 in KJV and WEB (real text: ~22 verses)."""
  src, tgt, _ = bible_pairs.translation_pairs(bible_pairs.books(["RUTH"]), "kjv", "web")
  return src[:24], tgt[:24]


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


def _tsv(path, rows, header="source\ttarget"):
  path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
  return path


def _config(train, dev=None, **data):
  c = finetune_configs.get_config("task=seq2seq,tiny")
  c.data.train_file, c.data.dev_file = str(train), str(dev or "")
  c.data.update(data)
  return c


def test_the_translation_split_holds_out_books_and_is_aligned(pairs):
  src, tgt = pairs
  assert src[0].startswith("Now it came to pass in the days when the judges ruled")
  assert tgt[0].startswith("It happened in the days when the judges judged")
  held = set(bible_pairs.books(bible_pairs.EVAL_BOOKS))
  assert held.isdisjoint(bible_pairs.train_books()) and len(held) == 8


def test_targets_are_shifted_and_long_rows_truncated_and_counted(tmp_path, pairs, tokenizer,
                                                                 capsys):
  rows = list(zip(*pairs, strict=True))
  task = seq2seq.Seq2SeqTask(_config(_tsv(tmp_path / "t.tsv", rows[:16]),
                                     _tsv(tmp_path / "d.tsv", rows[16:])), tokenizer)
  a = task.train_arrays
  assert a["input_ids"].shape == (16, 32) and a["decoder_input_ids"].shape == (16, 16)
  n = a["label_mask"][0].sum()
  assert a["decoder_input_ids"][0, 0] == tokenizer.cls_id
  np.testing.assert_array_equal(a["decoder_input_ids"][0, 1:n], a["labels"][0, :n - 1])
  # Ruth's verses are longer than 32 source / 15 target tokens: truncated, counted, said.
  lengths = [len(x) for x in tokenizer.encode_batch(pairs[0][:16])]
  assert task.stats["train_truncated_sources"] == sum(n + 2 > 32 for n in lengths) > 0
  assert task.stats["train_truncated_targets"] > 0
  assert "were truncated" in capsys.readouterr().err


def test_label_smoothed_loss_matches_numpy():
  class Fixed:
    def __call__(self, ids, mask, dec, dropout_rng=None):
      return jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)

  batch = {"input_ids": None, "attention_mask": None, "decoder_input_ids": None,
           "labels": jnp.array([[1, 2, 0], [4, 0, 0]]),
           "label_mask": jnp.array([[1, 1, 0], [1, 0, 0]])}
  loss, metrics = seq2seq.seq2seq_loss(Fixed(), batch, None, label_smoothing=0.1)
  logits = np.random.default_rng(0).normal(size=(2, 3, 5))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = [0.9 * -logp[b, t, y] + 0.1 * -logp[b, t].mean() for b, t, y in
          ((0, 0, 1), (0, 1, 2), (1, 0, 4))]
  assert float(loss) == pytest.approx(np.mean(want), rel=1e-5)
  assert float(metrics["nll"][1]) == 3
  right = sum(logits[b, t].argmax() == y for b, t, y in ((0, 0, 1), (0, 1, 2), (1, 0, 4)))
  assert float(metrics["token_accuracy"][0]) == right


def test_length_buckets_cut_source_and_target_to_the_longer_side_and_resume(tmp_path, tokenizer):
  """Real verses (Ruth, Jonah) through the task's own training iterator (data.length_buckets):
  a batch of pairs is cut on both sides to the smallest bucket holding its longest source or
  target, batches are narrower than unsorted ones, and the state resumes the same batches."""
  src, tgt, _ = bible_pairs.translation_pairs(bible_pairs.books(["RUTH", "JONAH"]), "kjv", "web")
  c = _config(_tsv(tmp_path / "t.tsv", list(zip(src, tgt, strict=True))), dev=None,
              max_seq_length=64, length_buckets="24,40")
  c.seq2seq.max_target_length = 48
  task, c, data = finetune.make_task(c, str(tmp_path / "work"))
  assert data.length_buckets == (24, 40, 64)
  a = data.train_arrays
  it = task.train_iter()
  n_batches = len(a["input_ids"]) // c.train.batch_size
  widths = []
  for _ in range(n_batches):
    b = next(it)
    width = b["input_ids"].shape[1]
    longest = max(b["attention_mask"].sum(1).max(), b["label_mask"].sum(1).max())
    assert width == min(w for w in (24, 40, 64) if w >= longest)
    assert b["labels"].shape[1] == min(width, 48) == b["decoder_input_ids"].shape[1]
    widths.append(width)
  lengths = np.maximum(a["attention_mask"].sum(1), a["label_mask"].sum(1))
  perm = np.random.default_rng(0).permutation(len(lengths))[:len(widths) * 4].reshape(-1, 4)
  unsorted = [min(w for w in (24, 40, 64) if w >= lengths[r].max()) for r in perm]
  assert np.mean(widths) < np.mean(unsorted) - 4 and len(set(widths)) > 1
  state = it.get_state()
  want = next(it)
  again = task.train_iter()
  again.set_state(state)
  got = next(again)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_detokenize_joins_what_wordpiece_decoding_spaced_out(tokenizer):
  """Real WEB text through the tokenizer and back: possessives and hyphenated names come back
  whole (sacreBLEU's 13a tokeniser counts "naomi ' s" as three tokens, "naomi's" as one)."""
  text = "Elimelech, Naomi's husband, died in Beth-lehem; you don't know it."
  spaced = tokenizer.decode(tokenizer.encode(text))
  assert "' s" in spaced and " - " in spaced
  assert seq2seq.detokenize(spaced) == ("elimelech, naomi's husband, died in beth-lehem ; you "
                                        "don't know it.")
  assert seq2seq.detokenize("the ' quoted ' word") == "the ' quoted ' word"


def test_scores_come_from_sacrebleu_and_rouge(pairs):
  import sacrebleu
  src, tgt = pairs
  perfect = seq2seq.scores(tgt, tgt)
  assert perfect["bleu"] == pytest.approx(100) and perfect["rougeL"] == pytest.approx(100)
  copy = seq2seq.scores(src, tgt)
  assert copy["bleu"] == pytest.approx(sacrebleu.corpus_bleu(src, [tgt]).score)
  assert 20 < copy["bleu"] < 90 and 0 < copy["chrf"] < 100
  assert seq2seq.scores([s.upper() for s in tgt], tgt, lowercase=True)["bleu"] == pytest.approx(
      100)


@pytest.mark.slow  # two train steps, then generation compiled for eval and for predict
def test_two_steps_then_predict_writes_text_per_row(tmp_path, pairs):
  rows = list(zip(*pairs, strict=True))
  c = _config(_tsv(tmp_path / "t.tsv", rows[:16]), _tsv(tmp_path / "d.tsv", rows[16:20]))
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "work"))
  assert summary["status"] == "completed" and np.isfinite(summary["train"]["loss"])
  assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL"} <= set(summary["eval"])
  best = tmp_path / "work" / "best"
  info = json.loads((best / "model_info.json").read_text())
  assert info["architecture"] == "BertEncoderDecoder" and info["task"] == "seq2seq"
  recs = [json.loads(x) for x in (tmp_path / "work" / "dev_predictions.jsonl").read_text()
          .splitlines()]
  assert [r["target"] for r in recs] == list(pairs[1][16:20])
  out = predict.predict_file(best, tmp_path / "d.tsv", batch_size=2)
  assert [r["source"] for r in out] == list(pairs[0][16:20])
  assert all(isinstance(r["prediction"], str) for r in out)


@pytest.mark.parametrize("case,pattern", [
    ("missing_column", r"has no column 'target'"),
    ("empty_target", r"train pair 2 .* has an empty target"),
    ("no_pairs", r"is empty"),
])
def test_bad_pair_files_are_one_sentence_and_write_nothing(tmp_path, pairs, case, pattern):
  rows = list(zip(*pairs, strict=True))[:6]
  train = tmp_path / "t.tsv"
  if case == "missing_column":
    _tsv(train, [(s,) for s, _ in rows], header="source")
  elif case == "empty_target":
    _tsv(train, [rows[0], (rows[1][0], " "), *rows[2:]])
  else:
    train.write_text("", encoding="utf-8")
  workdir = tmp_path / "work"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("mine")
  with pytest.raises(UserError, match=pattern) as e:
    finetune.finetune_and_evaluate(_config(train), str(workdir))
  assert len(str(e.value).splitlines()) == 1
  assert [p.name for p in workdir.iterdir()] == ["keep.txt"]  # nothing written, nothing lost
  with pytest.raises(DataError):
    seq2seq.read_pairs(train, _config(train).data, "train")


def test_a_modernbert_checkpoint_cannot_start_the_decoder(tmp_path, pairs, vocab_path):
  from flax import nnx

  from bert_jax import modern_modeling, pretrained
  from bert_jax.modern_configuration import PRESETS
  cfg = PRESETS["modern_tiny"]
  model = modern_modeling.ModernBertModel(cfg, rngs=nnx.Rngs(params=0))
  pretrained.PretrainedMixin.save_pretrained(model, tmp_path / "modern")
  rows = list(zip(*pairs, strict=True))[:6]
  c = _config(_tsv(tmp_path / "t.tsv", rows), vocab=str(vocab_path))
  c.init_from, c.model.family = str(tmp_path / "modern"), "modern"
  with pytest.raises(UserError, match="not causal-compatible"):
    finetune.finetune_and_evaluate(c, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
