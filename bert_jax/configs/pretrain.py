"""Pretraining configs: `--config=configs/pretrain.py:VARIANT` with VARIANT in
tiny | demo_bert (= demo) | base | base_phase2 | large | large_phase2 (BERT: MLM + NSP),
budget (the 10-minute CPU recipe), or
modern_tiny | modern_demo | modern_base | modern_large (ModernBERT, model.family=modern: MLM only,
30% masking as in the ModernBERT recipe, Warner et al. 2024).

  tiny  (tests, seconds):   bert-jax-pretrain --config=configs/pretrain.py:tiny \
                              --workdir=/tmp/tiny --config.data.dir=DATA
  budget (what `make demo` runs through bert_jax.demo: the best recipe found for 10 minutes on
        2 CPU cores; ModernBERT family, MLM only, 30% masking, WSD fitted to the time budget):
                            bert-jax-pretrain --config=configs/pretrain.py:budget \
                              --workdir=/tmp/budget --config.data.dir=DATA
  demo_bert (alias demo; the BERT-compatible demo, MLM + NSP, 2-core CPU, 10 min):
                            bert-jax-pretrain --config=configs/pretrain.py:demo_bert \
                              --workdir=/tmp/demo --config.data.dir=DATA
  base  phase 1 (seq 128, 90% of steps) then phase 2 (seq 512, init from phase 1), as in the
        BERT paper (Devlin et al. 2019, appendix A.2; batch 256, 1M steps total):
                            bert-jax-pretrain --config=configs/pretrain.py:base \
                              --workdir=/gcs/BUCKET/base128 --config.data.dir=/gcs/BUCKET/data
                            bert-jax-pretrain --config=configs/pretrain.py:base_phase2 \
                              --workdir=/gcs/BUCKET/base512 --config.data.dir=/gcs/BUCKET/data \
                              --config.init_from=/gcs/BUCKET/base128/model
  large, large_phase2: the same for BERT-large.
  modern_demo (the demo's size as a ModernBERT, 2-core CPU, 10 min):
                            bert-jax-pretrain --config=configs/pretrain.py:modern_demo \
                              --workdir=/tmp/modern_demo --config.data.dir=DATA
  demo_zh (Chinese, what `make demo-zh` runs through bert_jax.demo_zh): the budget recipe with
        whole-word masking over jieba words stored by bert-jax-prepare --whole_word_segmenter.
  demo_zh_rtd: the same data and 10 minutes with ELECTRA's replaced-token detection (BERT-mini
        discriminator); `python -m bert_jax.demo --lang=zh --config=PATH/pretrain.py:demo_zh_rtd`.
        Measured against demo_zh at equal wall time: not better (benchmarks/RESULTS.md, "ELECTRA").
  modern_base, modern_large: ModernBERT-base (22 layers, 768 wide, GLU 1152, 12 heads) and
        -large at seq 1024 (the recipe's first phase; the model takes up to 8,192 tokens).
Recipe options on any BERT variant: ELECTRA's replaced-token detection (bert_jax/electra.py;
WORKDIR/model is the discriminator, `bert-jax-convert --to=hf` makes it a transformers
ElectraForPreTraining) and a falling training masking rate (held-out rows keep theirs):
                            bert-jax-pretrain --config=configs/pretrain.py:demo \
                              --workdir=/tmp/rtd --config.data.dir=DATA \
                              --config.model.objective=rtd --config.data.max_predictions=38 \
                              --config.data.masking_schedule=linear \
                              --config.data.masked_lm_prob_start=0.3
/gcs/BUCKET is the bucket mounted with gcsfuse (launch/ does this); gs:// URLs are refused.
Override anything: --config.optimizer.learning_rate=1e-4 --config.mesh.fsdp=8 ...
"""
from ml_collections import ConfigDict

from bert_jax import sharding
from bert_jax.configs import common

VARIANTS = ("tiny", "budget", "demo_bert", "demo", "base", "base_phase2", "large",
            "large_phase2", "modern_tiny", "modern_demo", "modern_base", "modern_large",
            "demo_zh", "demo_zh_rtd")


def get_config(variant: str = "demo") -> ConfigDict:
  c = ConfigDict()
  c.variant = variant
  c.init_from = ""  # A bert_jax model directory (converted or pretrained) to start from.

  c.model = ConfigDict(dict(
      family="bert",  # bert | modern (ModernBERT: modern_configuration, MLM-only pretraining)
      # bert: tiny | mini | small | medium | base | large (configuration.PRESETS);
      # modern: modern_tiny | modern_demo | modern_base | modern_large (modern_configuration)
      preset="mini",
      num_hidden_layers=0, hidden_size=0, num_attention_heads=0, intermediate_size=0,  # 0: preset
      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
      max_position_embeddings=512,
      # Matmul inputs; auto: bf16 where the device computes it natively, else f32 (device_dtype).
      # Accumulation and master weights stay f32.
      dtype="auto",
      attention_impl="auto",
      remat=False,
      # mlm: BERT's MLM (+ NSP/SOP), ModernBERT's MLM. rtd: ELECTRA's replaced-token detection
      # (bert_jax/electra.py, BERT family): a generator of generator_fraction of the width
      # (generator_layers deep, 0: as deep) and the discriminator sharing its embeddings;
      # loss = generator MLM + rtd_weight * discriminator BCE. WORKDIR/model is the discriminator.
      objective="mlm", generator_fraction=0.25, generator_layers=0, rtd_weight=50.0,
  ))
  c.data = ConfigDict(dict(
      dir="",  # A dataset from `bert-jax-prepare` (required except in bert_jax.demo).
      vocab="",  # Default: the vocabulary stored with the dataset.
      seq_len=128,
      max_predictions=20,
      masked_lm_prob=0.15,  # The training rate (a schedule's final rate).
      # constant | linear: from masked_lm_prob_start (0: masked_lm_prob) at step 0 to
      # masked_lm_prob at masking_schedule_steps (0: train.num_steps), e.g. 0.3 -> 0.15.
      masking_schedule="constant", masked_lm_prob_start=0.0, masking_schedule_steps=0,
      eval_masked_lm_prob=0.0,  # Held-out masking rate; 0: masked_lm_prob.
      eval_nsp_mode="",  # Held-out rows: "" as trained, or none (contiguous MLM-only rows).
      short_seq_prob=0.1,
      whole_word_mask=False,
      nsp_mode="nsp",  # nsp | sop
      pack=False,
      eval_batches=20,
      num_shards=0,  # Data shards (0 = one per process); fixed, it lets a run change host count.
  ))
  c.optimizer = ConfigDict(dict(
      name="adamw", learning_rate=1e-4, end_learning_rate=0.0,
      schedule="linear",  # linear | polynomial | constant | wsd (warmup-stable-decay)
      power=1.0,  # polynomial
      decay_fraction=0.2, decay_shape="linear",  # wsd: the decay's share of the steps; linear |
                                                 # 1-sqrt | cosine
      warmup_steps=10000, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0,
      grad_accum_steps=1,
  ))
  # Mesh sizes (one -1 = the remaining devices) and the logical axis rules, (name, mesh axis or
  # tuple of axes or None) pairs, e.g. --config.mesh.rules="(('batch', ('data', 'fsdp')), ...)".
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules=sharding.DEFAULT_RULES))
  c.checkpoint = ConfigDict(dict(every_steps=1000, max_to_keep=3, async_save=True))
  c.train = ConfigDict(dict(
      batch_size=256,
      # num_steps=0 with max_train_seconds: a wall-clock run times train.measure_steps steps
      # (after the first at full batch size, which compiles), fixes num_steps so the schedule
      # ends as the budget runs out, and stores it with its checkpoints (resumes continue it).
      num_steps=900_000, max_train_seconds=0.0, measure_steps=5,
      # Batch-size warm-up: batch_size_warmup_min, doubled while below batch_size, in equal
      # shares of the first batch_size_warmup_steps steps (each size compiles once); 0: off.
      batch_size_warmup_steps=0, batch_size_warmup_min=0,
      seed=0, log_every=100, eval_every=10_000, skip_nonfinite=False, peak_flops_per_device=0.0,
  ))

  if variant == "tiny":
    c.model.update(common.tiny_model(max_position_embeddings=64))
    c.data.update(seq_len=32, max_predictions=5, eval_batches=2)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    c.checkpoint.update(every_steps=5, async_save=False)
    c.train.update(batch_size=8, num_steps=2, log_every=1, eval_every=0)
  elif variant == "budget":
    _budget(c)
  elif variant in ("demo_bert", "demo"):  # demo: the name `make demo` ran before budget
    # 4 layers / 256 hidden (BERT-mini), batch 32, seq 128: the peers' time-to-accuracy job.
    c.model.update(preset="mini", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    c.data.update(seq_len=128, max_predictions=20, eval_batches=16)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01)
    c.checkpoint.update(every_steps=500, max_to_keep=2)
    # The learning rate decays to 0 at 1,300 steps, about what an idle 2-core AVX-512 CPU does
    # in the 10-minute budget; a slower machine stops at the budget before the end of the decay.
    c.train.update(batch_size=32, num_steps=1300, max_train_seconds=600.0, log_every=50,
                   eval_every=0)
  elif variant in ("base", "base_phase2", "large", "large_phase2"):
    size = variant.split("_")[0]
    c.model.preset = size
    c.optimizer.update(learning_rate=1e-4, warmup_steps=10_000)
    c.train.update(batch_size=256, num_steps=900_000, eval_every=10_000)
    if variant.endswith("phase2"):
      c.data.update(seq_len=512, max_predictions=80)
      c.optimizer.update(warmup_steps=1000)
      c.train.update(num_steps=100_000)
    c.checkpoint.every_steps = 5000
  elif variant.startswith("modern_") and variant in VARIANTS:
    _modern(c, variant)
  elif variant == "demo_zh":
    # `make demo-zh` (bert_jax/demo_zh.py): the budget recipe on Chinese text with jieba whole
    # words. Its schedule is fitted to the 10 minutes, so it ends decayed on a loaded machine too
    # (modern_demo's fixed 1,300 steps stopped at 62 under load, the learning rate still rising).
    _budget(c)
    c.variant = "demo_zh"
    c.data.whole_word_mask = True
  elif variant == "demo_zh_rtd":
    _budget_rtd(c)
    c.variant = "demo_zh_rtd"
    c.data.whole_word_mask = True
  else:
    raise ValueError(f"Unknown pretrain variant {variant!r}; choose one of "
                     f"{', '.join(VARIANTS)}.")
  return c


def _budget(c: ConfigDict) -> None:
  """The most held-out MLM accuracy in 10 minutes on 2 CPU cores (benchmarks/RESULTS.md, "Budget
  pretraining"): the modern_demo model (ModernBERT family, 4 layers / 256 wide), MLM only at 30%
  masking (evaluated at 15%), no dropout, and a warmup-stable-decay schedule fitted to the time
  budget from the measured step time (num_steps=0), so it ends decayed on any machine."""
  _modern(c, "modern_demo")
  c.variant = "budget"
  # modern_demo's peak (stable at this size), a short warm-up (loaded machines fit ~100 steps
  # into the budget), the decay in the last 30% (1-sqrt: Hägele et al. 2024).
  c.optimizer.update(learning_rate=1e-3, warmup_steps=30, schedule="wsd", decay_fraction=0.3,
                     decay_shape="1-sqrt", weight_decay=0.01)
  c.train.update(num_steps=0, max_train_seconds=600.0, measure_steps=5)


def _budget_rtd(c: ConfigDict) -> None:
  """ELECTRA replaced-token detection (Clark et al. 2020) in the budget's 10 minutes: a BERT-mini
  discriminator (4 layers / 256 wide, the budget model's depth and width) and a generator a
  quarter of its width, rtd_weight 50, the paper's 15% masking, no NSP (contiguous rows), no
  dropout, the WSD schedule fitted to the time budget."""
  _budget(c)
  c.variant = "budget_rtd"
  c.model.update(family="bert", preset="mini", max_position_embeddings=512, objective="rtd",
                 generator_fraction=0.25, generator_layers=0, rtd_weight=50.0)
  c.data.update(masked_lm_prob=0.15, max_predictions=20, eval_masked_lm_prob=0.15)
  # Post-LN BERT: a longer warm-up than the pre-LN ModernBERT budget's 30 steps. ELECTRA-small's
  # peak, 5e-4 (at 1e-3 the discriminator fell back to the constant "original" guess by step 150
  # and stayed there; at 5e-4 it ends 2% under that guess's loss after 1,100 steps, RESULTS.md).
  c.optimizer.update(learning_rate=5e-4, warmup_steps=100)


def _modern(c: ConfigDict, variant: str) -> None:
  """ModernBERT: MLM only (nsp_mode none: rows of contiguous text across sentence and document
  boundaries, no NSP head or loss), 30% masking, no dropout."""
  c.model.update(family="modern", preset=variant, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
  # Evaluated at BERT's 15% so held-out MLM accuracy compares with the BERT variants'.
  c.data.update(nsp_mode="none", eval_masked_lm_prob=0.15)
  if variant == "modern_tiny":
    # No position table: the 128-token limit (fine-tuning's SQuAD windows) costs nothing.
    c.model.update(max_position_embeddings=128, dtype="float32", attention_impl="xla")
    c.data.update(seq_len=32, max_predictions=10, masked_lm_prob=0.3, eval_batches=2)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    c.checkpoint.update(every_steps=5, async_save=False)
    c.train.update(batch_size=8, num_steps=2, log_every=1, eval_every=0)
  elif variant == "modern_demo":
    # The demo's budget and data (batch 32, seq 128, 10 minutes) for a side-by-side comparison.
    c.model.update(max_position_embeddings=1024)
    c.data.update(seq_len=128, max_predictions=40, masked_lm_prob=0.3, eval_batches=16)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01)
    c.checkpoint.update(every_steps=500, max_to_keep=2)
    c.train.update(batch_size=32, num_steps=1300, max_train_seconds=600.0, log_every=50,
                   eval_every=0)
  else:  # modern_base / modern_large: phase one of the recipe at seq 1024.
    c.model.update(max_position_embeddings=8192)
    c.data.update(seq_len=1024, max_predictions=320, masked_lm_prob=0.3)
    c.optimizer.update(learning_rate=8e-4 if variant == "modern_base" else 5e-4,
                       warmup_steps=3000, weight_decay=1e-5)
    c.train.update(batch_size=256, num_steps=900_000, eval_every=10_000)
    c.checkpoint.every_steps = 5000
