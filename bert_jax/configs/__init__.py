"""Configs as code: `get_config(arg)` files loaded with `--config=PATH:ARG` (see README)."""
