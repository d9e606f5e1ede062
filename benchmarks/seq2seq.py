r"""KJV -> WEB translation with BERT2BERT: the copy baseline, the scores of fine-tuned runs, and
generation speed (what benchmarks/RESULTS.md reports).

  python -m bert_jax.bible_pairs --translation --out=/tmp/kjv2web
  benchmarks/seq2seq_pair.sh warm /tmp/s2s      # alone (through /work/notes/measure): 1100 s
  benchmarks/seq2seq_pair.sh random /tmp/s2s    # same architecture and steps, random weights
  # scores of checkpoints (a learning curve; WORKDIR:STEP) on 512 held-out verses, beam 4:
  python benchmarks/seq2seq.py --dev=/tmp/kjv2web/dev.tsv --eval_rows=512 \
    --checkpoints=/tmp/s2s/warm:704,/tmp/s2s/random:200 --eval_beams=4
  # generation speed of a model directory:
  python benchmarks/seq2seq.py --dev=/tmp/kjv2web/dev.tsv --eval_rows=64 \
    --speed_model=/tmp/s2s/warm/best

Scores come from bert_jax.tasks.seq2seq.scores (sacreBLEU BLEU / chrF, rouge-score), lowercased
when the model's vocabulary is uncased, on the same evenly spaced dev rows the task evaluates.
Speed: generated tokens (the best hypothesis up to EOS) per second of warm `generate` calls with
beam 4, batch 1 and batch 32, after one compile call.
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags

_DEV = flags.DEFINE_string("dev", "/tmp/kjv2web/dev.tsv", "dev.tsv of bible_pairs --translation")
_ROWS = flags.DEFINE_integer("eval_rows", 64, "Evenly spaced dev rows (as seq2seq.eval_rows).")
_RUNS = flags.DEFINE_list("runs", [], "Fine-tuning workdirs to score (dev_predictions.jsonl).")
_SPEED = flags.DEFINE_string("speed_model", "", "A seq2seq model directory to time.")
_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams for the speed measurement.")
_LOWER = flags.DEFINE_bool("lowercase", True, "Score lowercased (uncased vocabularies).")
_CKPTS = flags.DEFINE_list("checkpoints", [], "WORKDIR:STEP,... fine-tuning checkpoints to "
                           "generate from and score on the --eval_rows dev rows (learning curve).")
_EVAL_BEAMS = flags.DEFINE_integer("eval_beams", 4, "Beams when scoring --checkpoints.")


def dev_rows(path, n):
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()[1:]
  rows = [line.split("\t") for line in lines]
  if n and len(rows) > n:
    keep = np.linspace(0, len(rows) - 1, n).round().astype(int)
    rows = [rows[i] for i in keep]
  return [r[0] for r in rows], [r[1] for r in rows]


def speed(model_dir, sources, num_beams):
  from bert_jax import generation, loading
  from bert_jax.tasks import seq2seq
  model, tok = loading.from_pretrained(model_dir)
  info = json.loads((pathlib.Path(model_dir) / "model_info.json").read_text())
  out = {}
  for batch in (1, 32):
    texts = (sources * (batch // len(sources) + 1))[:batch]
    arrays, _ = seq2seq.encode_sources(tok, texts, int(info.get("max_seq_length", 64)))
    gen = generation.GenerationConfig(
        max_length=int(info.get("max_target_length", 64)), num_beams=num_beams,
        decoder_start_token_id=tok.cls_id, eos_token_id=tok.sep_id, pad_token_id=tok.pad_id)
    t0 = time.time()
    generation.generate(model, arrays["input_ids"], arrays["attention_mask"], gen)
    compile_s = time.time() - t0
    reps = 3 if batch == 1 else 1
    t0 = time.time()
    tokens = 0
    for _ in range(reps):
      ids = generation.generate(model, arrays["input_ids"], arrays["attention_mask"], gen)
      tokens += sum(len(generation.strip(r, gen)) for r in ids)
    dt = time.time() - t0
    out[f"batch{batch}"] = {"tokens_per_sec": tokens / dt, "tokens": tokens, "seconds": dt,
                            "first_call_seconds": compile_s, "num_beams": num_beams}
  return out


def score_checkpoint(workdir, step, sources, references, num_beams, lowercase):
  """Scores of the model in WORKDIR's checkpoint STEP on these dev rows (generated as the task
  evaluates: seq2seq.generate_texts, the run's max lengths)."""
  import jax
  from flax import nnx
  from ml_collections import ConfigDict

  from bert_jax import checkpoint as ckpt_lib
  from bert_jax import finetune, optim, sharding, train
  from bert_jax.tasks import seq2seq
  ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=100, async_save=False)
  config = ConfigDict(ckpt.read_meta(step)["config"])
  config.seq2seq.num_beams = num_beams
  task, config, data = finetune.make_task(config, workdir)
  mesh = sharding.make_mesh(dict(config.mesh))
  with sharding.use_rules(sharding.rules_of(config.mesh)), jax.set_mesh(mesh):
    tx, _ = optim.create_optimizer(config.optimizer, config.train.num_steps)
    graphdef, abstract, _ = train.abstract_train_state(task, tx, mesh)
    state, _, _ = ckpt.restore(step, abstract)
    ckpt.close()
    model = nnx.merge(graphdef, state.params)
    arrays, _ = seq2seq.encode_sources(data.tokenizer, sources, data.max_seq_length)
    t0 = time.time()
    preds = seq2seq.generate_texts(model, data.tokenizer, arrays, data.gen,
                                   config.train.eval_batch_size)
  out = seq2seq.scores(preds, references, lowercase)
  out.update(step=step, num_beams=num_beams, generate_seconds=time.time() - t0,
             examples=[{"source": s, "prediction": p, "target": r}
                       for s, p, r in zip(sources[:3], preds[:3], references[:3], strict=True)])
  return out


def main(argv):
  del argv
  from bert_jax.tasks import seq2seq
  src, ref = dev_rows(_DEV.value, _ROWS.value)
  result = {"rows": len(src), "copy_source": seq2seq.scores(src, ref, _LOWER.value)}
  for run in _RUNS.value:
    recs = [json.loads(x) for x in
            (pathlib.Path(run) / "dev_predictions.jsonl").read_text().splitlines()]
    assert [r["target"] for r in recs] == ref, f"{run} was evaluated on other rows"
    result[run] = seq2seq.scores([r["prediction"] for r in recs], ref, _LOWER.value)
    summary = json.loads((pathlib.Path(run) / "summary.json").read_text())
    result[run].update(step=summary["step"], train_seconds=summary["train_seconds"])
  for spec in _CKPTS.value:
    workdir, step = spec.rsplit(":", 1)
    result[spec] = score_checkpoint(workdir, int(step), src, ref, _EVAL_BEAMS.value,
                                    _LOWER.value)
    print(json.dumps({spec: result[spec]}), flush=True)
  if _SPEED.value:
    result["speed"] = speed(_SPEED.value, src, _BEAMS.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
