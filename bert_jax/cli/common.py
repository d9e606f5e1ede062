"""What every absl entry point shares: config loading with readable errors, one-line failures,
multi-host start-up. Each CLI module stays a thin `main` that calls one library function."""
from __future__ import annotations

import os
import sys
import traceback

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_bool("verbose", False, "Show full tracebacks for errors.")
flags.DEFINE_string("coordinator_address", "",
                    "host:port of process 0 for multi-process runs (jax.distributed).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "This process's index (multi-process runs).")

# Errors that are the user's input, reported as one sentence without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                 PermissionError, KeyError, RuntimeError)


def quiet_logs() -> None:
  """Keeps the console to our progress lines: TFDS/orbax INFO chatter only with --verbose."""
  if not FLAGS.verbose:
    from absl import logging
    logging.set_verbosity(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def guarded(fn, *args, **kwargs):
  """Runs fn; an expected error becomes one line on stderr and exit code 2 (--verbose: raise)."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    if FLAGS.verbose:
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for app.run: a misspelt --config.key or a bad value is one sentence."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    # A config file that raised: its own last line says what was wrong.
    msg = f"{lines[0]} {lines[-1]}" if len(lines) > 1 else lines[0] if lines else "bad flags"
    fail(f"{msg} (run with --helpfull to see the flags).")
  except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/ValueError/TypeError.
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(text.replace("'", "").split())
    fail(f"bad config override ({text}); check the key against the config file.")
