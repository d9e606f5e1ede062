"""What every command-line tool shares: flag parsing with readable errors, config paths that
work from a checkout and from an installed package, user errors as one line, multi-host start-up.

A tool is a module of `bert_jax.cli` with its flags at module level, a `main(argv)` that calls
one library function, and `run()` (its console script) that calls `common.run(main)`.
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback

from absl import app, flags

from bert_jax import allocator, compile_cache
from bert_jax.errors import UserError

FLAGS = flags.FLAGS

VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks for errors.")
# Multi-process runs (pretrain, finetune); see maybe_initialize_distributed.
DISTRIBUTED_FLAGS = (
    flags.DEFINE_string("coordinator_address", "",
                        "host:port of process 0 for multi-process runs (jax.distributed)."),
    flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs)."),
    flags.DEFINE_integer("process_id", -1, "This process's index (multi-process runs)."),
)

PACKAGE_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
# `configs/NAME.py` (a checkout's symlink) or `bert_jax/configs/NAME.py`, then `:ARG` if any.
_CONFIG_PATH = re.compile(r"^(?:\./)?(?:bert_jax/)?configs/(?P<name>[A-Za-z0-9_]+\.py)"
                          r"(?P<arg>:.*)?$", re.DOTALL)


def define_quantize():
  """--quantize for the inference CLIs (predict, embed, fill-mask); bert_jax.quantization.MODES."""
  return flags.DEFINE_enum(
      "quantize", "none", ["none", "int8", "int8_dynamic"],
      "int8: post-training int8 weights through qwix (a quarter of the memory, float matmuls); "
      "int8_dynamic: int8 weights and per-token int8 activations, int8 matmuls (on oneDNN's "
      "VNNI kernels on CPU: bert_jax/onednn.py). See docs/shrink.md.")


def define_table_overrides() -> tuple:
  """Flags that override how a checkpoint's recorded input table is read (predict, explain);
  the values map by flag name onto the task's read_for_predict overrides."""
  return (
      flags.DEFINE_string("text_column", None, "Classification: override the text column."),
      flags.DEFINE_string("text_pair_column", None, "Classification: override the pair column."),
      flags.DEFINE_string("header", None, "Classification: auto | yes | no."),
      flags.DEFINE_string("format", None,
                          "csv | tsv | jsonl (classification), conll | text (NER)."),
  )


def quiet_logs() -> None:
  """Keeps the console to our progress lines: TFDS/orbax INFO chatter only with --verbose."""
  if not FLAGS.verbose:
    from absl import logging
    logging.set_verbosity(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def guarded(fn, *args, **kwargs):
  """Runs fn; a UserError becomes one line on stderr and exit code 2 (--verbose: with its
  traceback). Any other exception is a bug or a machine problem and propagates untouched."""
  try:
    return fn(*args, **kwargs)
  except UserError as e:
    if FLAGS.is_parsed() and FLAGS.verbose:
      traceback.print_exc()
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    fail(msg.strip().splitlines()[0] if msg.strip() else type(e).__name__)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize when flags or the environment ask for a multi-process run.

  TPU pods, SLURM and GKE JobSets are auto-detected by JAX; plain multi-process runs pass
  --coordinator_address/--num_processes/--process_id (or BERT_JAX_* environment variables);
  BERT_JAX_DISTRIBUTED=auto asks JAX to detect the cluster itself (Cloud TPU VM slices).
  """
  import jax
  address = FLAGS.coordinator_address or os.environ.get("BERT_JAX_COORDINATOR", "")
  nproc = FLAGS.num_processes or int(os.environ.get("BERT_JAX_NUM_PROCESSES", "0"))
  pid = FLAGS.process_id if FLAGS.process_id >= 0 else int(
      os.environ.get("BERT_JAX_PROCESS_ID", "-1"))
  if address:
    jax.distributed.initialize(coordinator_address=address, num_processes=nproc or None,
                               process_id=pid if pid >= 0 else None)
  elif os.environ.get("BERT_JAX_DISTRIBUTED") == "auto":
    # Cloud TPU VM slices set no environment variable: JAX finds the workers through the
    # metadata server. launch/tpu_vm_pod.sh sets this (it also enables orbax's preemption sync).
    jax.distributed.initialize()
  elif any(k in os.environ
           for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")) \
      and int(os.environ.get("SLURM_NTASKS", os.environ.get("BERT_JAX_NUM_PROCESSES", "2"))) > 1:
    jax.distributed.initialize()


def resolve_config_path(value: str) -> str:
  """`--config=PATH[:ARG]` with PATH `configs/NAME.py` or `bert_jax/configs/NAME.py` that does
  not exist here (an installed package, another directory) -> the package's own config file.

  Any other value, or a path that exists relative to the working directory, is returned as is.
  """
  m = _CONFIG_PATH.match(value)
  if m is None or os.path.exists(value.split(":", 1)[0]):
    return value
  packaged = PACKAGE_CONFIGS / m.group("name")
  return f"{packaged}{m.group('arg') or ''}" if packaged.is_file() else value


def _resolve_config_args(argv: list[str]) -> list[str]:
  """argv with the value of --config (`--config=V` or `--config V`) resolved."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(("--config=", "-config=")):
      flag, value = arg.split("=", 1)
      out[i] = f"{flag}={resolve_config_path(value)}"
    elif arg in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = resolve_config_path(out[i + 1])
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for app.run: config paths resolved (resolve_config_path), and a misspelt
  --config.key or a bad value is one sentence."""
  try:
    return FLAGS(_resolve_config_args(argv))
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    # A config file that raised: its own last line says what was wrong.
    msg = f"{lines[0]} {lines[-1]}" if len(lines) > 1 else lines[0] if lines else "bad flags"
    fail(f"{msg} (run with --helpfull to see the flags).")
  except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/ValueError/TypeError.
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(text.replace("'", "").split())
    fail(f"bad config override ({text}); check the key against the config file.")


def run(main) -> None:
  """app.run(main) for a tool module: user errors are one line (guarded), and `--help` lists
  the tool's flags and docstring also when it runs as a console script. First the process
  restarts itself once with the host allocator BERT_JAX_ALLOCATOR chooses (allocator.py) and
  turns on the persistent compilation cache (compile_cache.py).

  absl's --help shows the key flags and the docstring of the module that sys.argv[0] names.
  Under `python -m bert_jax.cli.X` that is the tool itself; a console script
  (`.venv/bin/bert-jax-X`) is a generated stub, so the tool's key flags are registered for it.
  """
  guarded(allocator.reexec)  # Before anything runs: tcmalloc / huge pages (allocator.py).
  compile_cache.enable()  # ~/.cache/bert_jax/xla unless set otherwise (compile_cache.py)
  tool = sys.modules[main.__module__]
  for flag in FLAGS.get_key_flags_for_module(tool):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  stub = sys.modules["__main__"]
  if stub is not tool and not stub.__doc__:
    stub.__doc__ = tool.__doc__
  app.run(lambda argv: guarded(main, argv), flags_parser=parse_flags)
