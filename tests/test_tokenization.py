"""Tokenizer parity with transformers.BertTokenizerFast on the real corpora, and SentencePiece."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_jax.tokenization import Tokenizer
from tests.conftest import TESTDATA, corpus_sentences

transformers = pytest.importorskip("transformers")

# Accents, CJK, control characters, a literal special token: what BERT's pipeline must handle.
EDGE_CASES = ["Héllo wörld, naïve café Zürich", "日本語のテキストと中文 mixed",
              "tab\there\x00 zero-width\u200b", "soft\u00adhyphen and ﬁ ligature",
              "a [MASK] in text", "ÀÉÎÕÜ ß Œuvre", "   ", ""]


def _hf(vocab, lower):
  tok = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=lower)
  assert tok.vocab_size > 1000, "transformers ignored the vocabulary (vocab_file= trap)"
  return tok


@pytest.fixture(scope="module")
def sentences(bible_path, mobydick_path):
  return corpus_sentences(bible_path, 400) + corpus_sentences(mobydick_path, 400) + EDGE_CASES


@pytest.fixture(scope="module")
def cased_vocab(tmp_path_factory, mobydick_path, bible_path):
  """A real cased WordPiece vocabulary, trained on both corpora with BERT's pipeline."""
  from tokenizers import BertWordPieceTokenizer
  trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
  trainer.train([str(mobydick_path), str(bible_path)], vocab_size=4000, min_frequency=2,
                show_progress=False)
  out = tmp_path_factory.mktemp("cased")
  trainer.save_model(str(out))
  return out / "vocab.txt"


def _unk_rate(ids_list, unk):
  total = sum(len(x) for x in ids_list)
  return sum(x.count(unk) for x in ids_list) / total


@pytest.mark.parametrize("lower", [True, False])
def test_encode_matches_transformers_uncased_vocab(vocab_path, sentences, lower):
  ours, ref = Tokenizer.from_vocab(vocab_path, lower), _hf(vocab_path, lower)
  got = ours.encode_batch(sentences)
  want = [ref(s, add_special_tokens=False)["input_ids"] for s in sentences]
  assert got == want
  assert [ours.encode(s) for s in sentences[:50]] == want[:50]
  assert ours.tokenize(sentences[3]) == ref.tokenize(sentences[3])
  if lower:
    assert _unk_rate(got, ours.unk_id) < 0.002


def test_encode_matches_transformers_cased_vocab(cased_vocab, sentences):
  ours = Tokenizer.from_vocab(cased_vocab)  # do_lower_case guessed from the vocabulary.
  assert not ours.do_lower_case
  ref = _hf(cased_vocab, False)
  got = ours.encode_batch(sentences)
  assert got == [ref(s, add_special_tokens=False)["input_ids"] for s in sentences]
  assert _unk_rate(got, ours.unk_id) < 0.01
  assert "Ahab" in ours.tokenize("Captain Ahab said")


def test_lower_case_is_guessed_for_uncased_vocab(vocab_path):
  assert Tokenizer.from_vocab(vocab_path).do_lower_case


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("max_length,padding", [(16, "max_length"), (48, "longest"),
                                                (512, "longest")])
def test_pairs_truncation_padding_match_transformers(vocab_path, sentences, lower, max_length,
                                                     padding):
  ours, ref = Tokenizer.from_vocab(vocab_path, lower), _hf(vocab_path, lower)
  a, b = sentences[:64], sentences[400:464]
  for pairs in (None, b):
    got = ours(a, pairs, max_length=max_length, padding=padding)
    want = ref(a, pairs, max_length=max_length, padding=padding, truncation=True,
               return_tensors="np")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
      assert got[key].dtype == np.int32
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_single_string_gives_batch_of_one_and_jax_tensors(vocab_path):
  tok = Tokenizer.from_vocab(vocab_path)
  out = tok("In the beginning God created the heavens and the earth.", "And the earth was waste.",
            return_tensors="jax")
  assert out["input_ids"].shape[0] == 1
  ids = np.asarray(out["input_ids"][0])
  assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and (ids == tok.sep_id).sum() == 2
  with pytest.raises(ValueError, match="text_pairs"):
    tok(["a", "b"], ["c"])


def test_decode_matches_transformers(vocab_path, sentences):
  ours, ref = Tokenizer.from_vocab(vocab_path), _hf(vocab_path, True)
  batch = ours(sentences[:20], sentences[20:40])["input_ids"]
  for row in batch:
    assert ours.decode(row) == ref.decode(row, skip_special_tokens=True)
    assert ours.decode(row, skip_special_tokens=False) == ref.decode(row)
  ids = ours.encode("whaling voyages")
  assert ours.convert_tokens_to_ids(ours.convert_ids_to_tokens(ids)) == ids


def test_special_ids_fingerprint_and_word_starts(vocab_path, cased_vocab):
  tok = Tokenizer.from_vocab(vocab_path)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert tok.special_ids == {0, 100, 101, 102, 103}
  assert tok.fingerprint == Tokenizer.from_vocab(vocab_path).fingerprint
  assert len(tok.fingerprint) == 16 and int(tok.fingerprint, 16) >= 0
  assert tok.fingerprint != Tokenizer.from_vocab(vocab_path, do_lower_case=False).fingerprint
  assert tok.fingerprint != Tokenizer.from_vocab(cased_vocab).fingerprint
  starts = tok.word_start_mask()
  assert starts.shape == (tok.vocab_size,) and starts.dtype == bool
  pieces = tok.tokenize("unbelievably whaleboats")
  ids = tok.convert_tokens_to_ids(pieces)
  assert [bool(starts[i]) for i in ids] == [not p.startswith("##") for p in pieces]
  assert not starts.all() and starts[tok.cls_id]


def test_save_loads_in_from_dir_and_transformers(tmp_path, cased_vocab, sentences):
  tok = Tokenizer.from_vocab(cased_vocab)
  tok.save(tmp_path)
  cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert cfg["do_lower_case"] is False and cfg["kind"] == "wordpiece"
  again = Tokenizer.from_dir(tmp_path)
  assert again.fingerprint == tok.fingerprint and not again.do_lower_case
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  got = tok(sentences[:30], sentences[30:60], max_length=40)
  want = ref(sentences[:30], sentences[30:60], max_length=40, padding="longest", truncation=True,
             return_tensors="np")
  np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
  np.testing.assert_array_equal(got["token_type_ids"], want["token_type_ids"])


def test_from_dir_reads_hf_folder(minilm_dir, vocab_path):
  tok = Tokenizer.from_dir(minilm_dir)
  assert tok.do_lower_case and tok.kind == "wordpiece" and tok.vocab_size == 30522
  text = "Hello, World!"
  assert tok.encode(text) == Tokenizer.from_vocab(vocab_path, True).encode(text)


def test_missing_vocab_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab"):
    Tokenizer.from_vocab(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    Tokenizer.from_dir(tmp_path)


# ---------------------------------------------------------------- SentencePiece
SPM = TESTDATA / "botchan_en_unigram_1000.model"


def test_sentencepiece_ids_and_specials(mobydick_path):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(SPM))
  tok = Tokenizer.from_vocab(SPM)
  assert tok.kind == "sentencepiece"
  # The documented rule: [CLS]/[SEP] are the model's <s>/</s>; [PAD] and [MASK] are appended.
  n = sp.get_piece_size()
  assert (tok.cls_id, tok.sep_id, tok.unk_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
  assert (tok.pad_id, tok.mask_id, tok.vocab_size) == (n, n + 1, n + 2)
  assert tok.convert_ids_to_tokens([tok.pad_id, tok.mask_id]) == ["[PAD]", "[MASK]"]
  assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_id
  lines = corpus_sentences(mobydick_path, 100)
  assert tok.encode_batch(lines) == [sp.encode(s) for s in lines]
  assert tok.tokenize(lines[0]) == sp.encode(lines[0], out_type=str)
  ids = tok.encode(lines[5])
  assert all(i not in tok.special_ids for i in ids)


def test_sentencepiece_call_decode_word_starts(tmp_path, mobydick_path):
  tok = Tokenizer.from_vocab(SPM)
  lines = corpus_sentences(mobydick_path, 8)
  out = tok(lines[:4], lines[4:], max_length=32, padding="max_length")
  ids, types, mask = out["input_ids"], out["token_type_ids"], out["attention_mask"]
  assert ids.shape == (4, 32) and (ids[:, 0] == tok.cls_id).all()
  assert ((ids == tok.sep_id).sum(1) == 2).all()
  assert ((ids == tok.pad_id) == (mask == 0)).all()
  assert (types[mask == 0] == 0).all() and (types.sum(1) > 0).all()
  text = "I am a cat. My name is Botchan."
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok(text)["input_ids"][0]) == text
  starts = tok.word_start_mask()
  pieces = tok.tokenize(text)
  assert [bool(starts[i]) for i in tok.encode(text)] == [p.startswith("▁") for p in pieces]
  tok.save(tmp_path)
  again = Tokenizer.from_dir(tmp_path)
  assert again.fingerprint == tok.fingerprint and again.mask_id == tok.mask_id
  assert again.encode_batch(lines) == tok.encode_batch(lines)
