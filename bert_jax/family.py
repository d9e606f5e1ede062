"""Model families: `bert` (BertConfig, modeling.py / heads.py) and `modern` (ModernBertConfig,
modern_modeling.py), and how a tool that knows one family's class finds the other's.

Everything that differs between the families by name lives here: which config a `model` section
or a checkpoint gives, where a head model keeps its encoder (`bert` / `model`), and which class of
the other family plays the same role (BertForSequenceClassification <-> ModernBertFor...). The
MLM-only ModernBERT has no NSP head, so BertForPreTraining's counterpart is ModernBertForMaskedLM.
"""
from __future__ import annotations

from bert_jax import device_dtype
from bert_jax.configuration import BertConfig
from bert_jax.errors import ConfigError, ModelFileError
from bert_jax.modern_configuration import PRESETS as MODERN_PRESETS
from bert_jax.modern_configuration import ModernBertConfig

FAMILIES = ("bert", "modern")
ENCODER_PREFIX = {"bert": "bert", "modern": "model"}  # Where a head model keeps its encoder.
DISPLAY = {"bert": "BERT", "modern": "ModernBERT"}


def of_config(config) -> str:
  """'modern' for a ModernBertConfig, else 'bert'."""
  return "modern" if isinstance(config, ModernBertConfig) else "bert"


def of_class(cls) -> str:
  """The family of a model class (a class or its name)."""
  name = cls if isinstance(cls, str) else cls.__name__
  return "modern" if name.startswith("ModernBert") else "bert"


def config_from_dict(d: dict):
  """A bert_config.json / config.json dict as the config of its family."""
  if d.get("model_type") == "modernbert":
    return ModernBertConfig.from_dict(d)
  return BertConfig.from_dict(d)


def counterpart(name: str, family: str) -> str:
  """The class name of `family` that plays the role of class `name` (either family's)."""
  if of_class(name) == family:
    return name
  if family == "modern":
    return "ModernBertForMaskedLM" if name == "BertForPreTraining" else "Modern" + name
  return name[len("Modern"):]


def check_family(cls_name: str, config, source) -> None:
  """Refuses loading a checkpoint of one family into a class of the other, in one sentence."""
  want, have = of_class(cls_name), of_config(config)
  if want != have:
    raise ModelFileError(
        f"{source} holds a {DISPLAY[have]} checkpoint (model.family={have}) but {cls_name} is a "
        f"{DISPLAY[want]} class; load it with {counterpart(cls_name, have)}.")


def check_config_family(model_cfg) -> str:
  family = model_cfg.get("family", "bert")
  if family not in FAMILIES:
    raise ConfigError(f"model.family={family!r} is not one of {', '.join(FAMILIES)}.")
  return family


def compute_settings(model_cfg) -> dict:
  """The `model` section's dropout and compute settings under its family's config names: what
  a fine-tuning run applies over a checkpoint's own config as well. `dtype="auto"` becomes the
  dtype fast on this device (device_dtype)."""
  common = dict(dtype=device_dtype.resolve(model_cfg.dtype),
                attention_impl=model_cfg.attention_impl, remat=model_cfg.remat)
  pooling = model_cfg.get("classifier_pooling", "")
  if check_config_family(model_cfg) == "modern":
    if pooling:
      common["classifier_pooling"] = pooling  # checked against POOLINGS by ModernBertConfig
    return dict(common, embedding_dropout=model_cfg.hidden_dropout_prob,
                mlp_dropout=model_cfg.hidden_dropout_prob,
                attention_dropout=model_cfg.attention_probs_dropout_prob)
  if pooling:
    raise ConfigError(f"model.classifier_pooling={pooling!r} is a ModernBERT setting; a BERT "
                      f"classifier reads its pooler (the [CLS] output through a dense layer): "
                      f"drop the flag, or fine-tune a model.family=modern checkpoint.")
  return dict(common, hidden_dropout_prob=model_cfg.hidden_dropout_prob,
              attention_probs_dropout_prob=model_cfg.attention_probs_dropout_prob)


def model_config_from(model_cfg, vocab_size: int):
  """The config a `model` section asks for: BertConfig (pretraining.bert_config_from) or, with
  `family: modern`, a ModernBertConfig from `preset` (modern_tiny | modern_demo | modern_base |
  modern_large) and the non-zero size overrides (intermediate_size is the GLU width).

  BERT's dropout fields map onto ModernBERT's: hidden_dropout_prob -> embedding_dropout and
  mlp_dropout, attention_probs_dropout_prob -> attention_dropout.
  """
  if check_config_family(model_cfg) == "bert":
    from bert_jax import pretraining
    return pretraining.bert_config_from(model_cfg, vocab_size)
  if model_cfg.preset not in MODERN_PRESETS:
    raise ConfigError(f"model.preset={model_cfg.preset!r} is not a ModernBERT size; with "
                      f"model.family=modern choose one of {', '.join(sorted(MODERN_PRESETS))}.")
  overrides = {k: model_cfg[k] for k in ("num_hidden_layers", "hidden_size",
                                          "num_attention_heads", "intermediate_size")
               if model_cfg[k]}
  overrides.update(compute_settings(model_cfg),
                   max_position_embeddings=model_cfg.max_position_embeddings)
  for k in ("local_attention", "global_attn_every_n_layers"):
    if model_cfg.get(k):
      overrides[k] = model_cfg[k]
  return MODERN_PRESETS[model_cfg.preset].replace(vocab_size=vocab_size, **overrides)


def head_model(config, bert_name: str, rngs, *args):
  """A fresh pure head model (heads.py or modern_modeling.py) of `config`'s family for the role
  of heads class `bert_name` (e.g. "BertForSequenceClassification"), built as cls(config, *args,
  rngs=rngs)."""
  if of_config(config) == "bert":
    from bert_jax import heads
    return getattr(heads, bert_name)(config, *args, rngs=rngs)
  from bert_jax import modern_modeling
  return modern_modeling.ARCHITECTURES[counterpart(bert_name, "modern")](config, *args, rngs=rngs)
