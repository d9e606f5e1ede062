"""`prepare(engine="beam")`: the local engine's work units, run as an Apache Beam pipeline.

Planning (inputs, file checks, byte-range units, plan.json) and finishing (TFDS shards, metadata,
statistics) stay on the launching machine and are `preparation`'s own code; Beam only distributes
the units: `Create(units) | Reshuffle | ParDo(_process_unit)`. Each unit streams its documents into
its own ArrayRecord parts and leaves a marker, exactly as a local worker does, so both engines give
byte-identical datasets, memory per worker stays bounded (no shuffle of examples through the
runner), a retried bundle just rewrites its unit, and a rerun does only the units without a marker.

Workers must see the inputs, the vocabulary and `output_dir` under the same paths: local disks for
the DirectRunner, a shared file system (NFS, Filestore, GCS FUSE) on Dataflow, Flink or Spark.
This module imports apache_beam; `preparation` imports it only for `engine="beam"`.
"""
from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bert_jax.data import preparation, reading

_NAMESPACE = "bert_jax.prepare"
_COUNTERS = ("documents", "sentences", "tokens", "bytes", "skipped_lines")


def pipeline_options(beam_options: str | Sequence[str] | None) -> PipelineOptions:
  """`--runner=... --flag=...` (one string, shell-quoted, or a list) -> PipelineOptions."""
  if isinstance(beam_options, str):
    beam_options = shlex.split(beam_options)
  args = list(beam_options or [])
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    args.append("--default_sdk_harness_log_level=WARNING")  # workers log every bundle at INFO
  return PipelineOptions(args)


class _PrepareUnit(beam.DoFn):
  """Runs `preparation._process_unit` on each unit; one tokenizer per worker process."""

  def __init__(self, work: str, vocab_path: str, do_lower_case: bool, strip_accents,
               layout: str, doc_lines: int, validation_fraction: float):
    self._work = work
    self._tokenizer_args = (vocab_path, do_lower_case, strip_accents)
    self._unit_args = (layout, doc_lines, validation_fraction)
    self._counters = {k: beam.metrics.Metrics.counter(_NAMESPACE, k) for k in _COUNTERS}
    self._units = beam.metrics.Metrics.counter(_NAMESPACE, "units")

  def setup(self):
    # Beam workers are the parallelism: one tokenizer thread each, as for local workers.
    preparation._init_worker(*self._tokenizer_args, single_thread=True)

  def process(self, unit_json):  # no annotation: Beam would log it as a string type hint
    unit = reading.Unit(**unit_json)
    # A retried bundle whose unit already finished has nothing left to do.
    if not os.path.exists(os.path.join(self._work, preparation.marker_name(unit))):
      layout, doc_lines, fraction = self._unit_args
      marker = preparation._process_unit(unit, self._work, layout, doc_lines, fraction)
      for k, c in self._counters.items():
        c.inc(marker["stats"][k])
      self._units.inc()
    yield unit.index


def run_units(todo: Sequence[reading.Unit], work: str, tok, layout: str, doc_lines: int,
              validation_fraction: float, options: PipelineOptions) -> None:
  """Processes `todo` with the runner `options` names; returns when the pipeline has finished."""
  # DirectRunner / portable workers are fresh interpreters: let them import this checkout's
  # bert_jax even when it is not installed (remote runners need --setup_file or --extra_package).
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  if root not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
  fn = _PrepareUnit(work, str(tok.vocab_path), tok.do_lower_case, tok.strip_accents, layout,
                    doc_lines, validation_fraction)
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
    raise reading.DataError(f"The Beam pipeline ended in state {state}; check the runner's logs, "
                            "then rerun the same command to finish the remaining units.")
  try:
    done = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_NAMESPACE))
    totals = {c.key.metric.name: c.committed for c in done["counters"]}
    logging.info("Beam preparation: %s", totals)
  except (NotImplementedError, KeyError, AttributeError):  # runners without metrics
    pass
