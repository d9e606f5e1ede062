"""Training masking-rate schedules on real text: the rate per step is what was asked, 80/10/10
holds, whole words stay whole, resume is bitwise across the schedule's change point, and the
held-out rows do not follow the training schedule."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bert_jax import input_pipeline as ip
from bert_jax import pretraining
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.data import mask_schedule, masking, prepare
from bert_jax.errors import ConfigError
from bert_jax.tokenization import Tokenizer

SEQ, PRED = 128, 40
SCHEDULE = mask_schedule.MaskingSchedule("linear", start=0.3, end=0.15, steps=6)


@pytest.fixture(scope="module")
def tok(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def data_dir(bible_path, vocab_path, tmp_path_factory):
  lines = bible_path.read_text(encoding="utf-8").splitlines()[1000:5000]
  src = tmp_path_factory.mktemp("corpus") / "bible.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path_factory.mktemp("ds") / "bible"
  prepare(str(src), out, vocab_path, layout="lines", doc_lines=24, validation_fraction=0.05,
          progress=False)
  return out


def _it(data_dir, **kw):
  args = dict(batch_size=16, seq_len=SEQ, max_predictions=PRED, seed=7, process_index=0,
              process_count=1, masking_schedule=SCHEDULE)
  args.update(kw)
  return iter(ip.create_pretraining_dataset(data_dir, "train", **args))


def _originals(b):
  ids = b["input_ids"].copy()
  rows, cols = np.nonzero(b["masked_lm_weights"])
  ids[rows, b["masked_lm_positions"][rows, cols]] = b["masked_lm_ids"][rows, cols]
  return ids


def _candidates(b, tok):
  special = np.zeros(tok.vocab_size, bool)
  special[list(tok.special_ids)] = True
  return (~special[_originals(b)] & (b["input_mask"] > 0)).sum(axis=1)


def test_rate_at_and_config():
  assert [SCHEDULE.rate_at(s) for s in (0, 3, 6, 100)] == pytest.approx([0.3, 0.225, 0.15, 0.15])
  assert SCHEDULE.max_rate == 0.3
  c = pretrain_configs.get_config("tiny")
  assert mask_schedule.from_config(c.data, 50) == mask_schedule.MaskingSchedule(
      "constant", 0.15, 0.15, 50)
  c.data.update(masking_schedule="linear", masked_lm_prob_start=0.3)
  assert mask_schedule.from_config(c.data, 50).rate_at(25) == pytest.approx(0.225)
  with pytest.raises(ConfigError, match="set data.masking_schedule_steps"):
    mask_schedule.from_config(c.data, 0)  # A wall-clock run: train.num_steps=0.
  with pytest.raises(ConfigError, match="data.masking_schedule='cosine'"):
    mask_schedule.MaskingSchedule("cosine")
  # 125 candidate tokens of a 128-token NSP row at 30% are 38 targets: 20 slots cannot hold them.
  with pytest.raises(ConfigError, match=r"data.max_predictions=20 .* at least 38"):
    mask_schedule.check_capacity(SCHEDULE, 128, 20, "nsp")
  mask_schedule.check_capacity(SCHEDULE, 128, 38, "nsp")


def test_make_task_refuses_too_few_predictions(data_dir):
  c = pretrain_configs.get_config("tiny")
  c.data.update(dir=str(data_dir), masking_schedule="linear", masked_lm_prob_start=0.5)
  with pytest.raises(ConfigError, match=r"data.max_predictions=5 .* highest masking rate 0.5"):
    pretraining.make_task(c)


def test_rate_per_step_and_80_10_10(data_dir, tok):
  it = _it(data_dir)
  batches = [next(it) for _ in range(8)]
  spec = masking.MaskingSpec.create(vocab_size=tok.vocab_size, special_ids=tok.special_ids,
                                    mask_id=tok.mask_id, max_predictions=PRED)
  mask = rand = same = total = 0
  for step, b in enumerate(batches):
    rate = SCHEDULE.rate_at(step)
    cand = _candidates(b, tok)
    got = b["masked_lm_weights"].sum(axis=1)
    # Every row holds exactly the count masking at this step's rate asks for.
    at_rate = dataclasses.replace(spec, masked_lm_prob=rate)
    want = [masking.num_to_predict(int(n), at_rate) for n in cand]
    np.testing.assert_array_equal(got, want)
    assert abs(got.sum() / cand.sum() - rate) < 0.01, (step, got.sum() / cand.sum())
    w = b["masked_lm_weights"] > 0
    rows, cols = np.nonzero(w)
    shown = b["input_ids"][rows, b["masked_lm_positions"][rows, cols]]
    labels = b["masked_lm_ids"][rows, cols]
    mask += np.sum(shown == tok.mask_id)
    same += np.sum(shown == labels)
    rand += np.sum((shown != tok.mask_id) & (shown != labels))
    total += len(shown)
    # Unmasked positions carry their original token: no [MASK] outside the targets.
    assert np.sum(b["input_ids"] == tok.mask_id) == np.sum(shown == tok.mask_id)
  assert total > 2500
  assert abs(mask / total - 0.8) < 0.03 and abs(same / total - 0.1) < 0.02
  assert abs(rand / total - 0.1) < 0.02
  # The rows themselves are the ones the constant pipeline builds: only the masks differ.
  plain = _it(data_dir, masking_schedule=None, masked_lm_prob=0.3)
  for b in batches[:2]:
    np.testing.assert_array_equal(_originals(next(plain)), _originals(b))


@pytest.mark.parametrize("kw", [dict(whole_word_mask=True), dict(pack=True, max_packed=3)],
                         ids=["whole_word", "packed"])
def test_whole_words_and_packed_rows(data_dir, tok, kw):
  it = _it(data_dir, **kw)
  word_start = tok.word_start_mask()
  special = np.zeros(tok.vocab_size, bool)
  special[list(tok.special_ids)] = True
  for step, b in enumerate(next(it) for _ in range(7)):
    rate = SCHEDULE.rate_at(step)
    frac = b["masked_lm_weights"].sum() / _candidates(b, tok).sum()
    assert abs(frac - rate) < 0.02, (step, frac, rate)
    if kw.get("whole_word_mask"):
      orig = _originals(b)
      for r in range(len(orig)):
        pos = set(b["masked_lm_positions"][r][b["masked_lm_weights"][r] > 0].tolist())
        for p in pos:  # A masked continuation piece has its word's previous piece masked too
          if not word_start[orig[r, p]] and not special[orig[r, p - 1]]:  # (after [SEP]: new)
            assert p - 1 in pos, (step, r, p)


def test_resume_is_bitwise_across_the_change_point(data_dir):
  straight = _it(data_dir, pack=True)
  want = [next(straight) for _ in range(10)]
  first = _it(data_dir, pack=True)
  for _ in range(4):
    next(first)
  state = first.get_state()
  resumed = _it(data_dir, pack=True)
  resumed.set_state(state)
  for step in range(4, 10):  # Through step 6, where the rate stops falling.
    got = next(resumed)
    for k in want[step]:
      np.testing.assert_array_equal(got[k], want[step][k], err_msg=f"{k} at step {step}")


def test_eval_rows_ignore_the_training_schedule(data_dir):
  def eval_batches(**data):
    c = pretrain_configs.get_config("tiny")
    c.data.update(dir=str(data_dir), max_predictions=12, eval_masked_lm_prob=0.15, **data)
    return list(pretraining.make_task(c).eval_batches())

  plain = eval_batches()
  scheduled = eval_batches(masking_schedule="linear", masked_lm_prob_start=0.3,
                           masked_lm_prob=0.2)
  assert len(plain) == len(scheduled) == 2
  for a, b in zip(plain, scheduled, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _runs(positions):
  positions = sorted(positions)
  return {tuple(r) for r in np.split(np.asarray(positions, int),
                                     np.flatnonzero(np.diff(positions) != 1) + 1) if len(r)}


def test_segmenter_words_stay_whole(tmp_path):
  """Chinese words from jieba are not in the rows: thinning keeps or drops each masked run whole,
  so every masked run of a thinned row is one of the rows' runs at the highest rate."""
  pytest.importorskip("jieba")
  from test_segmentation import zh_corpus

  from bert_jax.vocab import train_vocab
  corpus = zh_corpus(tmp_path / "zh.txt", reviews=300, paragraphs=100)
  vocab = train_vocab(corpus, str(tmp_path / "vocab.txt"), vocab_size=3000)
  prepare(corpus, tmp_path / "ds", vocab, layout="documents", validation_fraction=0.05,
          whole_word_segmenter="jieba", progress=False)
  kw = dict(whole_word_mask=True, tokenizer=Tokenizer.from_vocab(vocab))
  scheduled, plain = _it(tmp_path / "ds", **kw), _it(tmp_path / "ds", masking_schedule=None,
                                                     masked_lm_prob=0.3, **kw)
  kept = total = 0
  for step in range(5):
    b, full = next(scheduled), next(plain)
    for r in range(len(b["input_ids"])):
      runs = _runs(b["masked_lm_positions"][r][b["masked_lm_weights"][r] > 0].tolist())
      full_runs = _runs(full["masked_lm_positions"][r][full["masked_lm_weights"][r] > 0].tolist())
      assert runs <= full_runs, (step, r)
      kept, total = kept + len(runs), total + len(full_runs)
    if step == 4:
      assert b["masked_lm_weights"].sum() < 0.85 * full["masked_lm_weights"].sum()
  assert 0.5 * total < kept < total
