"""BertConfig: the model's hyper-parameters, with the field names of Google's `bert_config.json`.

Hugging Face `config.json` files use the same names, so both load unchanged with `from_json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from bert_jax.errors import ConfigError

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu", "swish")
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters (original names) plus how to compute them."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  # How to compute (not part of the released configs).
  dtype: str = "float32"  # Matmul input dtype; accumulation is always f32.
  param_dtype: str = "float32"  # Master weights.
  attention_impl: str = "xla"  # One of ATTENTION_IMPLEMENTATIONS.
  remat: bool = False  # Recompute each layer's activations in the backward pass.

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(
           f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
           f"{self.num_attention_heads}; choose a head count that divides it.")
    if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"attention_impl {self.attention_impl!r} is not one of "
                        f"{ATTENTION_IMPLEMENTATIONS}.")
    if self.hidden_act not in ACTIVATIONS:
      raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}.")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
    jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # Raises on an unknown dtype name.

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_dict(cls, d: dict[str, Any], **overrides) -> "BertConfig":
    """Builds a config from a bert_config.json / HF config.json dict; unknown keys are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    if "attention_impl" not in kwargs and "attn_implementation" in d:
      kwargs["attention_impl"] = "xla"  # HF's eager/sdpa choice does not apply to JAX.
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides) -> "BertConfig":
    with open(path, encoding="utf-8") as f:
      return cls.from_dict(json.load(f), **overrides)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=True)
      f.write("\n")

  def replace(self, **changes) -> "BertConfig":
    return dataclasses.replace(self, **changes)

  def shape_identity(self) -> dict[str, int]:
    """The fields that decide parameter shapes (dtype, dropout etc. may change across resumes).

    Checkpoints record it: a workdir or init_from of another shape is refused by comparing these.
    """
    return {k: getattr(self, k) for k in SHAPE_FIELDS}


def _preset(layers: int, hidden: int, heads: int) -> BertConfig:
  return BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                    intermediate_size=4 * hidden)


# The sizes Google released (google-research/bert README, "BERT-Tiny" ... "BERT-Large").
PRESETS: dict[str, BertConfig] = {
    "tiny": _preset(2, 128, 2),
    "mini": _preset(4, 256, 4),
    "small": _preset(4, 512, 8),
    "medium": _preset(8, 512, 8),
    "base": _preset(12, 768, 12),
    "large": _preset(24, 1024, 16),
}


def preset(name: str, **overrides) -> BertConfig:
  """Returns a named Google BERT size, e.g. `preset("base", vocab_size=32000)`."""
  if name not in PRESETS:
    raise ConfigError(f"Unknown BERT preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides)
