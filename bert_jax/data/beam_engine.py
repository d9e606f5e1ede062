"""`prepare(engine="beam")`: the local engine's work units, run as an Apache Beam pipeline.

Planning (inputs, file checks, byte-range units, plan.json) and finishing (TFDS shards, metadata,
statistics) stay on the launching machine (`preparation`); Beam only distributes the units:
`Create(units) | Reshuffle | ParDo(worker.process_unit)`. Each unit streams its documents into
its own ArrayRecord parts and leaves a marker, exactly as a local worker does, so both engines give
byte-identical datasets, memory per worker stays bounded (no shuffle of examples through the
runner), a retried bundle just rewrites its unit, and a rerun does only the units without a marker.

Inputs and `output_dir` are local paths every worker sees (local disks for the DirectRunner, a
shared mount on a cluster) or URLs (gs://... on Dataflow) read and written through Beam's
`FileSystems` (see `storage`). The vocabulary travels inside the DoFn, so workers need no copy.
This module imports apache_beam; `preparation` imports it only for `engine="beam"`.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from bert_jax.data import reading, storage, worker
from bert_jax.errors import DataError

_NAMESPACE = "bert_jax.prepare"
_COUNTERS = ("documents", "sentences", "tokens", "bytes", "skipped_lines")


def pipeline_options(beam_options: str | Sequence[str] | None) -> PipelineOptions:
  """`--runner=... --flag=...` (one string, shell-quoted, or a list) -> PipelineOptions."""
  if isinstance(beam_options, str):
    beam_options = shlex.split(beam_options)
  args = list(beam_options or [])
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    args.append("--default_sdk_harness_log_level=WARNING")  # workers log every bundle at INFO
  options = PipelineOptions(args)
  # The launcher's own URL reads and writes (planning, finishing) use the workers' file-system
  # options (S3 endpoint and keys, GCS project).
  FileSystems.set_options(options)
  return options


class _PrepareUnit(beam.DoFn):
  """Runs `worker.process_unit` on each unit; one tokenizer per worker process."""

  def __init__(self, work: str, vocab_path: str, do_lower_case: bool, strip_accents,
               layout: str, doc_lines: int, validation_fraction: float, segmenter: str = ""):
    self._work = work
    # The vocabulary's bytes, not its path: remote workers do not see the launcher's disk.
    with open(vocab_path, "rb") as f:
      self._vocab = (os.path.basename(vocab_path), f.read())
    self._tokenizer_args = (do_lower_case, strip_accents)
    self._unit_args = (layout, doc_lines, validation_fraction, segmenter)
    self._counters = {k: beam.metrics.Metrics.counter(_NAMESPACE, k) for k in _COUNTERS}
    self._units = beam.metrics.Metrics.counter(_NAMESPACE, "units")

  def setup(self):
    self._vocab_dir = tempfile.mkdtemp(prefix="bert_jax_vocab")
    name, data = self._vocab
    with open(os.path.join(self._vocab_dir, name), "wb") as f:  # the name tells the kind (.model)
      f.write(data)
    # Beam workers are the parallelism: one tokenizer thread each, as for local workers.
    worker.init_worker(os.path.join(self._vocab_dir, name), *self._tokenizer_args,
                       single_thread=True)

  def teardown(self):
    shutil.rmtree(getattr(self, "_vocab_dir", ""), ignore_errors=True)

  def process(self, unit_json):  # no annotation: Beam would log it as a string type hint
    unit = reading.Unit(**unit_json)
    # A retried bundle whose unit already finished has nothing left to do.
    if not storage.exists(storage.join(self._work, worker.marker_name(unit))):
      marker = worker.process_unit(unit, self._work, *self._unit_args)
      for k, c in self._counters.items():
        c.inc(marker["stats"][k])
      self._units.inc()
    yield unit.index


def run_units(todo: Sequence[reading.Unit], work: str, tok, layout: str, doc_lines: int,
              validation_fraction: float, options: PipelineOptions, segmenter: str = "") -> None:
  """Processes `todo` with the runner `options` names; returns when the pipeline has finished."""
  # DirectRunner / portable workers are fresh interpreters: let them import this checkout's
  # bert_jax even when it is not installed (remote runners need --setup_file or --extra_package).
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if root not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
  fn = _PrepareUnit(work, str(tok.vocab_path), tok.do_lower_case, tok.strip_accents, layout,
                    doc_lines, validation_fraction, segmenter)
  # Largest units first, so that a big file does not start last and finish the job alone.
  units = [u.to_json() for u in sorted(todo, key=lambda u: -u.size)]
  pipeline = beam.Pipeline(options=options)
  _ = (pipeline
       | "Units" >> beam.Create(units, reshuffle=False)
       | "Spread" >> beam.Reshuffle()
       | "Tokenize" >> beam.ParDo(fn))
  beam_logger = logging.getLogger("apache_beam")
  level = beam_logger.level
  if level < logging.WARNING:  # the local job service relays each worker's INFO lines
    beam_logger.setLevel(logging.WARNING)
  try:
    result = pipeline.run()
    state = result.wait_until_finish()
  finally:
    beam_logger.setLevel(level)
  if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
    raise DataError(f"The Beam pipeline ended in state {state}; check the runner's logs, "
                    "then rerun the same command to finish the remaining units.")
  try:
    done = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_NAMESPACE))
    totals = {c.key.metric.name: c.committed for c in done["counters"]}
    logging.info("Beam preparation: %s", totals)
  except (NotImplementedError, KeyError, AttributeError):  # runners without metrics
    pass
