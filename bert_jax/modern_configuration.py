"""ModernBertConfig: ModernBERT's hyper-parameters with the field names of its HF `config.json`.

The released answerdotai/ModernBERT-{base,large} `config.json` files (written by transformers 4.x)
name the RoPE bases `global_rope_theta` / `local_rope_theta` and the attention pattern
`global_attn_every_n_layers`; transformers 5 writes `rope_parameters` (per layer type) and
`layer_types` instead. `from_dict` reads both spellings; `to_dict` writes both, so either
transformers version loads what bert_jax writes.

Attention pattern: layer i is global (full attention) when i % global_attn_every_n_layers == 0,
else local: a query at position l sees keys m with |l - m| <= local_attention // 2 (transformers'
"sliding_window" is this half-window).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from bert_jax.errors import ConfigError

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")
# The activations bert_jax.layers.activation computes, with transformers' ACT2FN names.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu", "swish")
POOLINGS = ("cls", "mean")
LAYER_TYPES = ("full_attention", "sliding_attention")
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "norm_bias", "attention_bias", "mlp_bias", "decoder_bias",
                "classifier_bias")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
  """ModernBERT hyper-parameters (HF names) plus how to compute them."""

  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152  # The GLU width: Wi projects to 2 x this, Wo from this.
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  hidden_activation: str = "gelu"
  max_position_embeddings: int = 8192
  initializer_range: float = 0.02
  initializer_cutoff_factor: float = 2.0
  norm_eps: float = 1e-5
  norm_bias: bool = False
  pad_token_id: int = 50283
  eos_token_id: int = 50282
  bos_token_id: int = 50281
  cls_token_id: int = 50281
  sep_token_id: int = 50282
  global_rope_theta: float = 160000.0
  local_rope_theta: float = 10000.0
  attention_bias: bool = False
  attention_dropout: float = 0.0
  global_attn_every_n_layers: int = 3
  local_attention: int = 128  # The whole window; each side sees local_attention // 2 tokens.
  embedding_dropout: float = 0.0
  mlp_bias: bool = False
  mlp_dropout: float = 0.0
  decoder_bias: bool = True
  classifier_pooling: str = "cls"
  classifier_dropout: float = 0.0
  classifier_bias: bool = False
  classifier_activation: str = "gelu"
  tie_word_embeddings: bool = True
  model_type: str = "modernbert"
  # Per-layer "full_attention" / "sliding_attention"; None derives it from
  # global_attn_every_n_layers (transformers 5 stores the list itself).
  layer_types: tuple[str, ...] | None = None
  # How to compute (not part of the HF config).
  dtype: str = "float32"  # Matmul input dtype; accumulation is always f32.
  param_dtype: str = "float32"  # Master weights.
  attention_impl: str = "xla"  # One of ATTENTION_IMPLEMENTATIONS.
  remat: bool = False  # Recompute each layer's activations in the backward pass.

  def __post_init__(self):
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings", "global_attn_every_n_layers",
                 "local_attention"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(
          f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
          f"{self.num_attention_heads}; choose a head count that divides it.")
    if self.head_size % 2:
      raise ConfigError(f"The head size {self.head_size} (hidden_size / num_attention_heads) is "
                        "odd; rotary embeddings need an even head size.")
    for name in ("hidden_activation", "classifier_activation"):
      if getattr(self, name) not in ACTIVATIONS:
        raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {ACTIVATIONS}.")
    if self.classifier_pooling not in POOLINGS:
      raise ConfigError(f"classifier_pooling {self.classifier_pooling!r} is not one of "
                        f"{POOLINGS}.")
    if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"attention_impl {self.attention_impl!r} is not one of "
                        f"{ATTENTION_IMPLEMENTATIONS}.")
    if self.model_type != "modernbert":
      raise ConfigError(f"model_type {self.model_type!r} is not 'modernbert'.")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_hidden_layers:
        raise ConfigError(f"layer_types has {len(self.layer_types)} entries for "
                          f"{self.num_hidden_layers} layers; give one per layer.")
      bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if bad:
        raise ConfigError(f"layer_types holds {bad[0]!r}; each entry must be one of "
                          f"{LAYER_TYPES}.")
    for name in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
    try:
      jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    except TypeError as e:
      raise ConfigError(f"Unknown dtype in dtype={self.dtype!r} / "
                        f"param_dtype={self.param_dtype!r}.") from e

  # ---------------------------------------------------------------- derived values
  @property
  def head_size(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def sliding_window(self) -> int:
    """Half-window: a local layer's query sees keys at most this many positions away."""
    return self.local_attention // 2

  @property
  def resolved_layer_types(self) -> tuple[str, ...]:
    if self.layer_types is not None:
      return self.layer_types
    return tuple("sliding_attention" if i % self.global_attn_every_n_layers else "full_attention"
                 for i in range(self.num_hidden_layers))

  def is_global(self, layer: int) -> bool:
    return self.resolved_layer_types[layer] == "full_attention"

  # ---------------------------------------------------------------- (de)serialisation
  @classmethod
  def from_dict(cls, d: dict[str, Any], **overrides) -> "ModernBertConfig":
    """Builds a config from an HF config.json dict (transformers 4 or 5 spelling).

    Unknown keys are ignored, and so is HF's `dtype` (the stored weights' dtype) unless the
    dict is bert_jax's own (it then also has `param_dtype`). Callers that must refuse
    unsupported HF options (rope scaling, untied decoders, ...) check them first
    (modern_convert.check_supported).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    if "param_dtype" not in d:  # An HF file: its `dtype` is how the weights are stored.
      kwargs.pop("dtype", None)
    rope = d.get("rope_parameters") or {}
    for layer_type, field in (("full_attention", "global_rope_theta"),
                              ("sliding_attention", "local_rope_theta")):
      theta = (rope.get(layer_type) or {}).get("rope_theta")
      if theta is not None and field not in d:
        kwargs[field] = theta
    layer_types = kwargs.get("layer_types")
    if layer_types is not None:
      # Keep the plain integer form when the list is the every-n pattern, so presets compare equal.
      n = int(d.get("global_attn_every_n_layers", 0)) or _every_n(layer_types)
      if n and tuple(layer_types) == _pattern(n, len(layer_types)):
        kwargs["global_attn_every_n_layers"] = n
        kwargs["layer_types"] = None
    if "attention_impl" not in kwargs and "attn_implementation" in d:
      kwargs["attention_impl"] = "xla"  # HF's eager/sdpa choice does not apply to JAX.
    for key in ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "local_attention",
                "global_attn_every_n_layers"):
      if key in kwargs:
        kwargs[key] = int(kwargs[key])
    for key in ("global_rope_theta", "local_rope_theta"):
      if key in kwargs:
        kwargs[key] = float(kwargs[key])
    kwargs.update(overrides)
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides) -> "ModernBertConfig":
    with open(path, encoding="utf-8") as f:
      return cls.from_dict(json.load(f), **overrides)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layer_types"] = list(self.resolved_layer_types)
    d["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": self.global_rope_theta},
        "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rope_theta},
    }
    return d

  def to_hf_dict(self) -> dict[str, Any]:
    """The HF config.json fields (no compute settings)."""
    d = self.to_dict()
    for key in ("dtype", "param_dtype", "attention_impl", "remat"):
      d.pop(key)
    return d

  def to_json(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=True)
      f.write("\n")

  def replace(self, **changes) -> "ModernBertConfig":
    return dataclasses.replace(self, **changes)

  def shape_identity(self) -> dict:
    """The fields that decide parameter shapes, as BertConfig.shape_identity (checkpoints
    record it; a workdir or init_from of another shape or family is refused by comparing)."""
    return {"model_type": self.model_type,
            **{k: getattr(self, k) for k in SHAPE_FIELDS}}


def _pattern(n: int, layers: int) -> tuple[str, ...]:
  return tuple("sliding_attention" if i % n else "full_attention" for i in range(layers))


def _every_n(layer_types) -> int:
  """The n for which layer_types is the every-n-global pattern, or 0."""
  for n in range(1, len(layer_types) + 1):
    if tuple(layer_types) == _pattern(n, len(layer_types)):
      return n
  return 0


# modern_base / modern_large: answerdotai/ModernBERT-base / -large config.json (vocab 50368).
# modern_demo: the BERT demo's size (BERT-mini: 4 layers, 256 wide, 4 heads) with ModernBERT's
# GLU width ratio (1.5 x hidden) and a 64-token window, so a 128-token row has local layers.
PRESETS: dict[str, ModernBertConfig] = {
    "modern_tiny": ModernBertConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                    num_attention_heads=2, local_attention=16,
                                    max_position_embeddings=512),
    "modern_demo": ModernBertConfig(hidden_size=256, intermediate_size=384, num_hidden_layers=4,
                                    num_attention_heads=4, local_attention=64,
                                    max_position_embeddings=1024),
    "modern_base": ModernBertConfig(),
    "modern_large": ModernBertConfig(hidden_size=1024, intermediate_size=2624,
                                     num_hidden_layers=28, num_attention_heads=16),
}


def preset(name: str, **overrides) -> ModernBertConfig:
  """A named ModernBERT size, e.g. `preset("modern_base", vocab_size=30522)`."""
  if name not in PRESETS:
    raise ConfigError(f"Unknown ModernBERT preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name].replace(**overrides)
