"""What several configs share: the tiny model that tests and notebooks run in seconds on CPU.

Imported as `bert_jax.configs.common`, also by config files loaded by path
(`--config=configs/pretrain.py:tiny`), so one edit here changes every tiny run.
"""

# The tiny architecture: 1 layer, 32 wide, on top of configuration.PRESETS["tiny"] (BertConfig
# field names). notebook.tiny_hf_model saves a random model of this shape.
TINY_PRESET = "tiny"
TINY_ARCHITECTURE = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64)


def tiny_model(max_position_embeddings: int) -> dict:
  """A config's `model` fields for the tiny architecture, in f32 with plain XLA attention.

  Args:
    max_position_embeddings: the longest sequence the tiny run feeds (pretraining's 32-token
      sequences need 64, fine-tuning's 96-token SQuAD windows 128).
  """
  return dict(preset=TINY_PRESET, **TINY_ARCHITECTURE,
              max_position_embeddings=max_position_embeddings, dtype="float32",
              attention_impl="xla")
