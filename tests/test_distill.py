"""Distillation (configs/finetune.py:task=distill): a tiny teacher fine-tuned on real two-topic
lines, students of it trained by the one train loop; the losses' numbers; bad students."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import corpus_sentences
from flax import nnx
from test_tasks_classification import finetune_config

from bert_jax import finetune, model_dir, predict
from bert_jax.errors import ConfigError
from bert_jax.tasks import distill


@pytest.fixture(scope="module")
def topics(tmp_path_factory, bible_path, mobydick_path):
  """A real two-topic TSV (Bible verse vs Moby Dick line), with a header."""
  rows = [(t, "bible") for t in corpus_sentences(bible_path, 40, min_words=5)]
  rows += [(t, "moby") for t in corpus_sentences(mobydick_path, 40, min_words=5)]
  path = tmp_path_factory.mktemp("data") / "topics.tsv"
  path.write_text("sentence\ttopic\n" + "\n".join(f"{t}\t{lab}" for t, lab in rows))
  return path


def _data(c, topics):
  c.data.update(train_file=str(topics), text_column="sentence", label_column="topic",
                max_seq_length=32)
  c.train.update(batch_size=8)
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, topics):
  """A 3-layer, 32-wide classifier trained from scratch for 60 steps (about 75% dev accuracy; it
  predicts both topics)."""
  c = _data(finetune_config("task=classification,tiny"), topics)
  c.model.update(num_hidden_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  c.optimizer.update(learning_rate=1e-3, warmup_steps=1)
  c.train.update(num_steps=60)
  workdir = tmp_path_factory.mktemp("teacher")
  summary = finetune.finetune_and_evaluate(c, str(workdir))
  return workdir / "best", summary


@pytest.fixture(scope="module")
def untrained_teacher(tmp_path_factory, vocab_path):
  """A fresh 3-layer, 32-wide classifier saved as fine-tuning saves one (shapes and names are
  what the init and refusal tests need; no training)."""
  from bert_jax.tokenization import Tokenizer
  tokenizer = Tokenizer.from_vocab(vocab_path)
  model = _random_bert(vocab=tokenizer.vocab_size, seed=3)
  path = tmp_path_factory.mktemp("untrained") / "best"
  model_dir.save_model_dir(path, model, tokenizer, extra_info={
      "task": "classification", "label_names": ["bible", "moby"]})
  return path


def _distill_config(teacher_dir, topics, **distill_fields):
  c = _data(finetune_config("task=distill,tiny"), topics)
  c.init_from = str(teacher_dir)
  c.model.update(num_hidden_layers=0, hidden_size=0, num_attention_heads=0, intermediate_size=0)
  c.distill.update(distill_fields)
  return c


def _agreement(model, arrays) -> float:
  """How often the student's label is the teacher's, on `arrays`."""
  batch = {k: jnp.asarray(v) for k, v in arrays.items() if k != "labels"}
  graphdef, state = nnx.split(model)

  @jax.jit
  def labels(state):
    m = nnx.merge(graphdef, state)
    return (jnp.argmax(distill.forward(m.student, batch, None, hidden=False, attention=False)[0],
                       -1),
            jnp.argmax(distill.forward(m.teacher, batch, None, hidden=False, attention=False)[0],
                       -1))

  s, t = labels(state)
  assert len(set(np.asarray(t).tolist())) == 2  # Agreeing with it is not agreeing with a constant.
  return float(np.mean(np.asarray(s) == np.asarray(t)))


@pytest.mark.slow
def test_student_learns_the_teacher_in_one_jitted_step(teacher, topics, tmp_path):
  """A fresh narrow student (hidden, attention, logit and label losses, all in one jitted step)
  agrees with the teacher more after training; the teacher is untouched; best is a classifier."""
  from bert_jax import loading, train
  teacher_dir, _ = teacher
  c = _distill_config(teacher_dir, topics, layers="0,2", init_from_teacher=False,
                      hidden_weight=1.0, attention_weight=1.0, label_weight=0.5)
  c.model.update(hidden_size=16, intermediate_size=32)
  c.optimizer.update(learning_rate=3e-3, warmup_steps=1)
  c.train.update(num_steps=40, eval_every=0)
  task, cfg, data = finetune.make_task(c, str(tmp_path / "w"))
  initial = task.model_factory(nnx.Rngs(params=cfg.train.seed))  # What train.run starts from.
  loading.merge_params(initial, task.init_params())
  agree_before = _agreement(initial, data.train_arrays)
  traces = []
  loss_fn = task.loss_fn
  task.loss_fn = lambda *a: (traces.append(1), loss_fn(*a))[1]
  after = train.run(task, cfg, str(tmp_path / "w"))
  assert after["status"] == "completed" and after["step"] == 40
  assert len(traces) == 1  # Teacher and student traced once: one jitted step.
  assert {"hidden_loss", "attention_loss", "kd_loss", "label_loss"} <= set(after["train"])
  assert after["eval"]["teacher_accuracy"] > 0.5
  final = nnx.merge(after["graphdef"], after["state"].params)
  agree_after = _agreement(final, data.train_arrays)
  assert agree_after > agree_before + 0.15, (agree_before, agree_after)
  # The teacher in the train state is exactly the checkpoint it came from.
  _, _, t_params = model_dir.read_model_dir(teacher_dir)
  state_teacher = model_dir.flatten(jax.device_get(after["state"].params["teacher"]))
  for name, value in model_dir.flatten(t_params).items():
    np.testing.assert_array_equal(np.asarray(state_teacher[name]), value, err_msg=name)
  info = json.loads((tmp_path / "w" / "best" / "model_info.json").read_text())
  assert info["task"] == "classification" and info["architecture"] == (
      "BertForSequenceClassification")
  assert info["teacher_layers"] == [0, 2] and info["label_names"] == ["bible", "moby"]
  rows = predict.predict_file(tmp_path / "w" / "best", topics)  # predict reads the student.
  assert len(rows) == 80 and {r["label"] for r in rows} <= {"bible", "moby"}


def test_init_from_teacher_layers_copies_the_right_weights(untrained_teacher, topics, tmp_path):
  teacher_dir = untrained_teacher
  c = _distill_config(teacher_dir, topics, layers="0,2")
  task, _, _ = finetune.make_task(c, str(tmp_path))
  init = model_dir.flatten(task.init_params()["student"])
  _, _, t = model_dir.read_model_dir(teacher_dir)
  t = model_dir.flatten(t)
  np.testing.assert_array_equal(init["bert.encoder.layer.0.attention.self.query.kernel"],
                                t["bert.encoder.layer.0.attention.self.query.kernel"])
  np.testing.assert_array_equal(init["bert.encoder.layer.1.output.dense.kernel"],
                                t["bert.encoder.layer.2.output.dense.kernel"])
  assert not np.array_equal(init["bert.encoder.layer.1.output.dense.kernel"],
                            t["bert.encoder.layer.1.output.dense.kernel"])
  assert not any(k.startswith("bert.encoder.layer.2.") for k in init)
  for name in ("bert.embeddings.word_embeddings.embedding", "bert.pooler.dense.kernel",
               "classifier.kernel"):
    np.testing.assert_array_equal(init[name], t[name])
  # And the fresh student built by the trainer holds them.
  model = task.model_factory(nnx.Rngs(params=0))
  from bert_jax import loading
  loading.merge_params(model, task.init_params())
  np.testing.assert_allclose(model.student.bert.encoder.layer[1].output.dense.kernel[...],
                             t["bert.encoder.layer.2.output.dense.kernel"])


def test_evenly_spaced_layers():
  assert distill.teacher_layers("", 3, 6) == [1, 3, 5]
  assert distill.teacher_layers("", 2, 6) == [2, 5]
  assert distill.teacher_layers("0, 2,5", 0, 6) == [0, 2, 5]
  with pytest.raises(ConfigError, match="outside"):
    distill.teacher_layers("0,6", 0, 6)
  with pytest.raises(ConfigError, match="lists 2"):
    distill.teacher_layers("0,1", 3, 6)


def _random_bert(hidden=32, layers=3, seed=0, vocab=120):
  from bert_jax import heads, modeling
  cfg = modeling.preset("tiny", vocab_size=vocab, num_hidden_layers=layers, hidden_size=hidden,
                        num_attention_heads=2, intermediate_size=64, dtype="float32",
                        attention_impl="xla")
  return heads.BertForSequenceClassification(cfg, 2, rngs=nnx.Rngs(params=seed))


def _outputs(model, batch):
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda st, b: distill.forward(nnx.merge(graphdef, st), b, None, hidden=True,
                                              attention=True))
  return run(state, batch)


def test_hidden_and_attention_losses_shapes_and_zero_on_equal_models():
  ids = np.random.default_rng(0).integers(5, 120, (3, 10)).astype(np.int32)
  mask = np.ones((3, 10), np.int32)
  mask[1, 6:] = 0
  batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
  teacher = _random_bert()
  logits, hidden, probs = _outputs(teacher, batch)
  assert logits.shape == (3, 2) and len(hidden) == 4 and hidden[0].shape == (3, 10, 32)
  assert len(probs) == 3 and probs[0].shape == (3, 2, 10, 10)
  layer_map = [0, 1, 2]
  assert float(distill.hidden_loss(hidden, hidden, layer_map, mask)) == 0.0
  assert abs(float(distill.attention_loss(probs, probs, layer_map, mask))) < 1e-6
  assert np.all(np.abs(np.asarray(distill.soft_kl(logits, logits, 2.0))) < 1e-6)
  other = _random_bert(seed=1)
  _, h2, p2 = _outputs(other, batch)
  assert float(distill.hidden_loss(h2, hidden, layer_map, mask)) > 0.1
  assert float(distill.attention_loss(p2, probs, layer_map, mask)) > 0.0
  # A narrower student through a D_s -> D_t projection; the padded tokens do not count.
  narrow = _random_bert(hidden=16, layers=2)
  _, hn, _ = _outputs(narrow, batch)
  from bert_jax import layers
  proj = layers.Dense((16,), (32,), ("embed",), ("hidden",), init_std=0.02, dtype=jnp.float32,
                      param_dtype=jnp.float32, rngs=nnx.Rngs(params=0))
  loss = distill.hidden_loss(hn, hidden, [0, 2], mask, proj)
  assert loss.shape == () and float(loss) > 0
  moved = [h.at[1, 7:].add(100.0) for h in hidden]  # Only padded positions of row 1 change.
  assert float(distill.hidden_loss(hn, moved, [0, 2], mask, proj)) == pytest.approx(float(loss))
  # T^2 scaling: the soft KL at T grows like T^2 * KL(T) (equal to the plain KL at T=1).
  t, s = jnp.array([[2.0, -1.0]]), jnp.array([[0.0, 0.5]])
  p, q = jax.nn.softmax(t / 3.0), jax.nn.log_softmax(s / 3.0)
  expect = 9.0 * jnp.sum(p * (jnp.log(p) - q))
  assert float(distill.soft_kl(t, s, 3.0)[0]) == pytest.approx(float(expect), rel=1e-5)


def test_student_wider_than_its_teacher_layers_is_refused(untrained_teacher, topics, tmp_path):
  teacher_dir = untrained_teacher
  c = _distill_config(teacher_dir, topics, layers="0,2")
  c.model.update(hidden_size=64, num_attention_heads=2)
  with pytest.raises(ConfigError, match="wider than the teacher layers"):
    finetune.make_task(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_cli_refuses_a_wider_student_in_one_line(untrained_teacher, topics, tmp_path):
  import subprocess
  import sys

  from conftest import REPO
  teacher_dir = untrained_teacher
  proc = subprocess.run(
      [sys.executable, "-m", "bert_jax.cli.finetune",
       f"--config={REPO}/configs/finetune.py:task=distill,tiny", f"--workdir={tmp_path / 'w'}",
       f"--config.init_from={teacher_dir}", f"--config.data.train_file={topics}",
       "--config.data.text_column=sentence", "--config.data.label_column=topic",
       "--config.distill.layers=0,2", "--config.model.num_hidden_layers=0",
       "--config.model.hidden_size=64", "--config.model.num_attention_heads=2",
       "--config.model.intermediate_size=64"],
      capture_output=True, text=True, timeout=120, cwd=REPO,
      env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and "wider than the teacher layers" in lines[0], proc.stderr
  assert not (tmp_path / "w" / "best").exists()
