"""Flags and the Hugging Face config shared by the peer scripts (stdlib only: runs in any venv)."""
from __future__ import annotations

import argparse

# BERT presets (google-research/bert README), as configuration.PRESETS: (layers, hidden, heads).
PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8),
           "medium": (8, 512, 8), "base": (12, 768, 12), "large": (24, 1024, 16)}


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
  a = parser.add_argument
  a("--preset", default="base", choices=sorted(PRESETS))
  a("--batch_size", type=int, default=8)
  a("--seq_len", type=int, default=128)
  a("--max_predictions", type=int, default=20)
  a("--vocab_size", type=int, default=30522)
  a("--dropout", type=float, default=0.1)
  a("--dtype", default="float32", choices=("float32", "bfloat16"))
  a("--steps", type=int, default=7)
  a("--warmup", type=int, default=2)
  a("--seed", type=int, default=0)
  a("--threads", type=int, default=0, help="0: the library's default")
  # configs/pretrain.py:base's optimizer section.
  a("--learning_rate", type=float, default=1e-4)
  a("--warmup_steps", type=int, default=10000)
  a("--weight_decay", type=float, default=0.01)
  a("--b1", type=float, default=0.9)
  a("--b2", type=float, default=0.999)
  a("--eps", type=float, default=1e-6)
  a("--clip_norm", type=float, default=1.0)
  return parser.parse_args()


def hf_config_kwargs(args: argparse.Namespace) -> dict:
  layers, hidden, heads = PRESETS[args.preset]
  return dict(vocab_size=args.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
              num_attention_heads=heads, intermediate_size=4 * hidden, hidden_act="gelu",
              hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
              max_position_embeddings=512, type_vocab_size=2)
