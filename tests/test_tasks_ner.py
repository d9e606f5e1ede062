"""NER data: CoNLL reading (real WikiGold), IO/BIO schemes, first-sub-token labels, bad input."""
import numpy as np
import pytest
from conftest import TESTDATA

from bert_jax.errors import DataError
from bert_jax.tasks import ner
from bert_jax.tokenization import Tokenizer

WIKIGOLD = TESTDATA / "wikigold.conll.txt"


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


def test_read_wikigold():
  sents = ner.read_conll(WIKIGOLD)
  # 1,841 blank-line blocks (the data README's count) of which 145 are -DOCSTART- markers.
  assert len(sents) == 1841 - 145
  words, tags = sents[0]
  assert words[:2] == ["010", "is"] and tags[0] == "I-MISC"
  assert {t[:2] for _, ts in sents for t in ts} == {"I-", "O"}  # An IO file.


def test_schemes():
  io = ["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
  assert ner.to_bio(io) == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
  assert ner.to_io(ner.to_bio(io)) == io
  assert ner.convert_scheme(io, "keep") == io
  with pytest.raises(DataError, match="label_scheme"):
    ner.convert_scheme(io, "bilou")


def test_labels_on_first_subtokens(tokenizer):
  sents = [(["Williamsport", "is", "in", "Pennsylvania"], ["B-LOC", "O", "O", "B-LOC"])]
  index = {"O": 0, "B-LOC": 1, "I-LOC": 2}
  arrays, firsts = ner.encode(tokenizer, sents, index, 16)
  pieces = tokenizer.tokenize("Williamsport")
  assert len(pieces) > 1  # A word split into sub-tokens.
  labels = arrays["labels"][0]
  assert firsts[0][0] == 1 and labels[1] == 1
  assert all(labels[1 + k] == -1 for k in range(1, len(pieces)))  # No loss on the rest.
  assert labels[firsts[0][1]] == 0 and labels[firsts[0][3]] == 1
  assert labels[0] == -1  # [CLS]
  # Decoding reads the first sub-token of each word.
  logits = np.zeros((1, 16, 3))
  for p, k in zip(firsts[0], (1, 0, 0, 1), strict=False):
    logits[0, p, k] = 5.0
  tags, lost = ner.decode(logits, firsts, ["O", "B-LOC", "I-LOC"])
  assert tags == [["B-LOC", "O", "O", "B-LOC"]] and lost == 0
  ents = ner.entities(sents[0][0], tags[0])
  assert [e["text"] for e in ents] == ["Williamsport", "Pennsylvania"]


def test_truncated_words_are_counted(tokenizer):
  words = ["word"] * 20
  arrays, firsts = ner.encode(tokenizer, [(words, ["O"] * 20)], {"O": 0}, 8)
  assert firsts[0].count(-1) == 20 - 6  # 8 positions minus [CLS] and [SEP].
  tags, lost = ner.decode(np.zeros((1, 8, 1)), firsts, ["O"])
  assert lost == 14 and len(tags[0]) == 20


def test_task_split_and_unseen_dev_tag(tmp_path, tokenizer, capsys):
  from test_tasks_classification import finetune_config
  lines = WIKIGOLD.read_text(encoding="utf-8").split("\n\n")
  train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
  train.write_text("\n\n".join(lines[:40]))
  dev.write_text("\n\n".join(lines[40:50]) + "\n\nParis I-CITY\nrocks O\n")
  c = finetune_config("task=ner,tiny")
  c.data.update(train_file=str(train), dev_file=str(dev))
  task = ner.NerTask(c, tokenizer)
  assert task.label_names[0] == "O" and "B-PER" in task.label_names  # Trained as BIO.
  assert task.stats["dev_unseen_label_tokens"] == 1
  assert "B-CITY" in capsys.readouterr().err  # Named as trained (BIO).
  assert task.dev_gold[-1][1] == ["I-CITY", "O"]  # Gold keeps it: recall pays for it.


def test_bad_conll(tmp_path):
  empty = tmp_path / "empty.conll"
  empty.write_text("\n\n")
  with pytest.raises(DataError, match="no sentences"):
    ner.read_conll(empty)
  untagged = tmp_path / "untagged.conll"
  untagged.write_text("Paris I-LOC\nrocks\n")
  with pytest.raises(DataError, match=":2 has no tag column"):
    ner.read_conll(untagged)
  assert ner.read_conll(untagged, need_tags=False)[0][1] == ["I-LOC", "O"]
