"""Input pipeline on a real corpus slice: shapes, MLM/NSP statistics, decoding, resume, sharding."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bert_jax import input_pipeline as ip
from bert_jax.data import prepare
from bert_jax.tokenization import Tokenizer

SEQ, PRED = 128, 32  # PRED above 15% of 128 so the cap never binds in the statistics test


@pytest.fixture(scope="module")
def tok(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def bible_slice(bible_path, tmp_path_factory):
  lines = bible_path.read_text(encoding="utf-8").splitlines()[200:9000]
  path = tmp_path_factory.mktemp("corpus") / "bible-slice.txt"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def data_dir(bible_slice, vocab_path, tmp_path_factory):
  out = tmp_path_factory.mktemp("ds") / "bible"
  prepare(str(bible_slice), out, vocab_path, layout="lines", doc_lines=24,
          validation_fraction=0.05, progress=False)
  return out


def _ds(data_dir, **kw):
  args = dict(batch_size=8, seq_len=SEQ, max_predictions=PRED, seed=3, process_index=0,
              process_count=1)
  args.update(kw)
  return ip.create_pretraining_dataset(data_dir, "train", **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _originals(b):
  """input_ids with the masked positions restored to their original ids."""
  ids = b["input_ids"].copy()
  rows, cols = np.nonzero(b["masked_lm_weights"])
  ids[rows, b["masked_lm_positions"][rows, cols]] = b["masked_lm_ids"][rows, cols]
  return ids


def test_dataset_info(data_dir, tok):
  info = ip.dataset_info(data_dir)
  assert info["vocab_fingerprint"] == tok.fingerprint and info["vocab_size"] == tok.vocab_size
  assert info["splits"]["train"] == info["stats"]["splits"]["train"]["documents"] > 300
  assert info["splits"]["validation"] > 0


def test_batch_keys_shapes_and_row_structure(data_dir, tok):
  b = next(iter(_ds(data_dir)))
  want = {"input_ids": (8, SEQ), "input_mask": (8, SEQ), "segment_ids": (8, SEQ),
          "masked_lm_positions": (8, PRED), "masked_lm_ids": (8, PRED),
          "masked_lm_weights": (8, PRED), "next_sentence_labels": (8,)}
  assert {k: v.shape for k, v in b.items()} == want
  for k, v in b.items():
    assert v.dtype == (np.float32 if k == "masked_lm_weights" else np.int32), k
  for row, mask, seg in zip(_originals(b), b["input_mask"], b["segment_ids"], strict=True):
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and n <= SEQ
    assert row[0] == tok.cls_id and row[n - 1] == tok.sep_id
    seps = np.flatnonzero(row[:n] == tok.sep_id)
    assert len(seps) == 2 and seps[0] >= 2 and seps[1] > seps[0] + 1
    assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:n] == 1).all()
    assert not seg[n:].any() and not row[n:].any()


def test_masking_and_nsp_statistics(data_dir, tok):
  b = _stack(_take(iter(_ds(data_dir, batch_size=64)), 40))  # 2560 pairs
  special = np.isin(_originals(b), list(tok.special_ids))
  non_special = int((b["input_mask"].astype(bool) & ~special).sum())
  w = b["masked_lm_weights"] > 0
  assert abs(w.sum() / non_special - 0.15) < 0.01
  labels = b["masked_lm_ids"][w]
  assert not np.isin(labels, list(tok.special_ids)).any()
  rows = np.nonzero(w)[0]
  now = b["input_ids"][rows, b["masked_lm_positions"][w]]
  frac_mask = np.mean(now == tok.mask_id)
  frac_keep = np.mean(now == labels)
  assert abs(frac_mask - 0.8) < 0.02 and abs(frac_keep - 0.1) < 0.02
  assert abs(1 - frac_mask - frac_keep - 0.1) < 0.02
  # Positions are distinct and sorted inside each row.
  for pos, wt in zip(b["masked_lm_positions"], w, strict=True):
    p = pos[wt]
    assert (np.diff(p) > 0).all() and (p > 0).all()
  assert abs(b["next_sentence_labels"].mean() - 0.5) < 0.03
  lengths = b["input_mask"].sum(1)
  assert lengths.max() <= SEQ and (lengths < 0.6 * SEQ).mean() > 0.05  # short_seq_prob rows


def _normal(text):
  # A segment truncated at its front may start with a "##" continuation piece.
  return re.sub(r"\s+", "", text.lower()).removeprefix("##")


def test_every_segment_decodes_to_corpus_text(data_dir, tok, bible_slice):
  corpus = _normal(bible_slice.read_text(encoding="utf-8"))
  b = _stack(_take(iter(_ds(data_dir, batch_size=32)), 8))
  checked = 0
  for row, n in zip(_originals(b), b["input_mask"].sum(1), strict=True):
    row = row[:n]
    assert tok.unk_id not in row
    sep = int(np.flatnonzero(row == tok.sep_id)[0])
    a, bb = row[1:sep], row[sep + 1:n - 1]
    for seg in (a, bb):  # (not a + b: truncation may cut the end of a)
      text = _normal(tok.decode(seg))
      assert text in corpus, text[:80]
      checked += 1
  assert checked >= 256


def test_whole_word_masking(data_dir, tok):
  b = _stack(_take(iter(_ds(data_dir, batch_size=32, whole_word_mask=True)), 6))
  starts = tok.word_start_mask()
  orig = _originals(b)
  whole = 0
  for r in range(len(orig)):
    masked = set(b["masked_lm_positions"][r][b["masked_lm_weights"][r] > 0].tolist())
    for p in masked:  # the word's continuation pieces are masked with it, and its start
      if p + 1 < SEQ and b["input_mask"][r, p + 1] and not starts[orig[r, p + 1]]:
        assert p + 1 in masked
        whole += 1
      if not starts[orig[r, p]]:
        assert p - 1 in masked or orig[r, p - 1] in tok.special_ids
  assert whole > 10


def test_sop_labels_swap_order(data_dir, tok):
  b = _stack(_take(iter(_ds(data_dir, batch_size=64, nsp_mode="sop")), 10))
  assert abs(b["next_sentence_labels"].mean() - 0.5) < 0.05


def test_sop_segments_come_from_one_document_in_order_or_swapped(data_dir, tok, bible_slice):
  corpus = _normal(bible_slice.read_text(encoding="utf-8"))
  b = _stack(_take(iter(_ds(data_dir, batch_size=32, nsp_mode="sop")), 4))
  rows = zip(_originals(b), b["input_mask"].sum(1), b["next_sentence_labels"], strict=True)
  for row, n, label in rows:
    sep = int(np.flatnonzero(row == tok.sep_id)[0])
    a, bb = row[1:sep], row[sep + 1:n - 1]
    first, second = (a, bb) if label == 0 else (bb, a)
    # Truncation may cut the end of the first or the start of the second: a small gap is allowed.
    f, s = _normal(tok.decode(first)), _normal(tok.decode(second))
    assert re.search(re.escape(f) + ".{0,300}?" + re.escape(s), corpus), (f[:50], s[:50])


def test_packing(data_dir, tok):
  seq = 256
  ds = _ds(data_dir, seq_len=seq, max_predictions=40, pack=True, max_packed=4,
           short_seq_prob=0.6, batch_size=16)
  b = next(iter(ds))
  assert b["cls_positions"].shape == (16, 4) and b["next_sentence_labels"].shape == (16, 4)
  assert b["position_ids"].shape == b["packed_segment_ids"].shape == (16, seq)
  assert (b["next_sentence_weights"].sum(1) > 1).any()  # some rows hold several pairs
  for r in range(16):
    k = int(b["next_sentence_weights"][r].sum())
    seg = b["packed_segment_ids"][r]
    n = int(b["input_mask"][r].sum())
    assert set(np.unique(seg[:n])) == set(range(1, k + 1)) and not seg[n:].any()
    for j in range(k):
      where = np.flatnonzero(seg == j + 1)
      assert where[0] == b["cls_positions"][r, j]
      assert (b["position_ids"][r, where] == np.arange(len(where))).all()
      assert b["input_ids"][r, where[0]] == tok.cls_id
    assert b["masked_lm_weights"][r].sum() <= 40


@pytest.mark.parametrize("pack", [False, True])
def test_resume_is_bitwise_exact(data_dir, pack):
  kw = dict(pack=pack, short_seq_prob=0.5 if pack else 0.1, whole_word_mask=pack)
  it = iter(_ds(data_dir, **kw))
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = _take(it, 6)
  again = iter(_ds(data_dir, **kw))
  again.set_state(state)
  for want, got in zip(expected, _take(again, 6), strict=True):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k], err_msg=k)
  fresh = _take(iter(_ds(data_dir, **kw)), 11)[5:]
  for want, got in zip(expected, fresh, strict=True):
    np.testing.assert_array_equal(want["input_ids"], got["input_ids"])
  other = next(iter(_ds(data_dir, seed=4, **kw)))
  assert not np.array_equal(other["input_ids"], fresh[0]["input_ids"])


def test_epochs_reshuffle_and_end(data_dir):
  n = ip.dataset_info(data_dir)["splits"]["validation"]
  kw = dict(batch_size=4, num_epochs=2, drop_remainder=False, with_document_index=True)
  docs = np.concatenate([b["document_index"] for b in
                         ip.create_pretraining_dataset(data_dir, "validation", seq_len=SEQ,
                                                       max_predictions=PRED, seed=1,
                                                       process_index=0, process_count=1, **kw)])
  first = list(dict.fromkeys(docs[:len(docs) // 2].tolist()))
  assert sorted(set(docs.tolist())) == list(range(n))
  assert len(docs) > 2 * n  # several pairs per document, both epochs, then the iterator ends
  assert first != list(dict.fromkeys(docs[len(docs) // 2:].tolist()))[:len(first)]


def test_two_processes_disjoint_and_complete(data_dir):
  def docs(pi, pc):
    ds = _ds(data_dir, process_index=pi, process_count=pc, num_epochs=1, drop_remainder=False,
             with_document_index=True, batch_size=16)
    return np.concatenate([b["document_index"] for b in ds])
  d0, d1 = set(docs(0, 2).tolist()), set(docs(1, 2).tolist())
  assert d0 and d1 and not d0 & d1
  assert d0 | d1 == set(range(ip.dataset_info(data_dir)["splits"]["train"]))


def test_vocab_fingerprint_mismatch(data_dir, tok):
  other = Tokenizer.from_vocab(tok.vocab_path, do_lower_case=False)  # same file, cased
  with pytest.raises(ip.VocabMismatchError, match="prepare the data again"):
    ip.check_vocab(data_dir, other)
  with pytest.raises(ip.VocabMismatchError):
    _ds(data_dir, tokenizer=other)
  ip.check_vocab(data_dir, tok)
  b = next(iter(_ds(data_dir, tokenizer=tok)))
  np.testing.assert_array_equal(b["input_ids"], next(iter(_ds(data_dir)))["input_ids"])


def test_bad_arguments(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
    ip.dataset_info(tmp_path)
  with pytest.raises(ValueError, match="nsp_mode"):
    _ds(data_dir, nsp_mode="next")
  with pytest.raises(ValueError, match="fewer than"):
    _ds(data_dir, process_count=10**6)


def test_to_global_arrays(data_dir):
  import jax

  from bert_jax.sharding import make_mesh
  mesh = make_mesh({"data": -1})
  b = next(iter(_ds(data_dir)))
  g = ip.to_global_arrays(b, mesh)
  assert g["input_ids"].shape == (8, SEQ) and isinstance(g["input_ids"], jax.Array)
  np.testing.assert_array_equal(np.asarray(g["masked_lm_weights"]), b["masked_lm_weights"])


_OPEN_FROM_THREADS = """
import pickle, sys, threading
from bert_jax import input_pipeline
docs = input_pipeline._Documents(sys.argv[1], "train")
out = {}
def work(i):
  out[i] = pickle.loads(pickle.dumps(docs))[3]  # a pickled copy, as grain's workers hold
threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join(120)
assert len(out) == 16, f"{16 - len(out)} threads never opened the dataset"
assert all(len(d) == len(out[0]) and all((a == b).all() for a, b in zip(d, out[0]))
           for d in out.values())
print("ok")
"""


def test_sixteen_threads_open_the_dataset_at_once(data_dir):
  # In a fresh interpreter, so the first import of tensorflow_datasets happens in the threads
  # (that import deadlocked grain's prefetch threads once on Python 3.11).
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-c", _OPEN_FROM_THREADS, str(data_dir)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
