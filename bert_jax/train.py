"""The one train loop, shared by pretraining and fine-tuning.

`make_train_step` builds `train_step(state, batch, rng) -> (state, metrics)`: the whole update
(gradient accumulation over micro-batches, clipping, optimizer, optional skip of non-finite
updates). `run(task, config, workdir)` drives it: sharded initialisation, resume, data, logging,
evaluation, checkpoints, SIGTERM and NaN handling. A `Task` supplies what differs between
pretraining and fine-tuning: the model, the loss and the data.

Budget runs: with train.num_steps=0 and train.max_train_seconds the loop times
train.measure_steps steps (after the first full-size step, which compiles), fixes num_steps so
the schedule ends as the budget runs out (optim.wall_clock_steps), passes it to the one compiled
step as an argument and stores it in every later checkpoint's meta (`schedule_steps`), so a
resumed run continues the same schedule. train.batch_size_warmup_steps feeds smaller global
batches first (`batch_size_at`, a pure function of the step: resumes stay bitwise).

Metrics are `{name: (sum, weight)}` pairs, reduced on the host as sum / weight, so accumulation
over micro-batches, steps and evaluation batches is exact.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bert_jax import attention, loading, model_dir, multihost, optim, sharding
from bert_jax import checkpoint as ckpt_lib
from bert_jax import flops as flops_lib
from bert_jax.errors import ConfigError, TrainingError
from bert_jax.metric_writers import MetricWriter

Metrics = dict[str, tuple[jax.Array, jax.Array]]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nested dict of arrays (nnx.State.to_pure_dict())
  opt_state: Any


@dataclasses.dataclass
class Task:
  """What a training job trains on.

  model_factory(rngs) builds the model; loss_fn(model, batch, dropout_rng) returns
  (scalar loss, metrics); train_iter() returns an iterator of host batches (numpy dicts, the
  process's share of the global batch) with get_state()/set_state().
  identity is stored with checkpoints: a workdir holding another identity is refused.

  Evaluation is one of two kinds:
  - sums: the jitted eval step runs eval_metrics(model, batch) (default: loss_fn's metrics
    without dropout) over eval_batches() and sums them over batches and processes; a metric's
    sum may be an array (a histogram), which summarize(means, sums) turns into figures;
  - evaluate(model, mesh, step) -> {name: value}, for metrics that need all predictions
    (F1, MCC, SQuAD); it runs on every process and may keep the best model.
  """
  name: str
  model_factory: Callable[[nnx.Rngs | None], nnx.Module]
  loss_fn: Callable[[nnx.Module, dict, jax.Array | None], tuple[jax.Array, Metrics]]
  train_iter: Callable[[], Iterator[dict]]
  eval_batches: Callable[[], Iterable[dict]] | None = None
  eval_metrics: Callable[[nnx.Module, dict], Metrics] | None = None
  summarize: Callable[[dict[str, float], dict], dict[str, float]] | None = None
  evaluate: Callable[[nnx.Module, Any, int], dict[str, float]] | None = None
  init_params: Callable[[], dict] | None = None  # Params merged into a fresh init by name.
  # Top-level parameter subtrees the optimizer never changes (distillation's teacher).
  frozen: tuple[str, ...] = ()
  identity: dict = dataclasses.field(default_factory=dict)
  tokens_per_example: float = 0
  flops_per_example: float = 0.0
  # The row length those two figures are for: a batch of shorter rows (length buckets) counts
  # in proportion to its width. 0: every batch has full rows.
  seq_len: int = 0


# ----------------------------------------------------------------------------- state


def _opt_state_shardings(tx, abstract_opt_state, param_shardings, mesh):
  """Each parameter-shaped part of the optimizer state (AdamW's mu, nu) is sharded like the
  parameters (optax finds those parts); counts and other leaves are replicated. Parameters
  without state (optax.masked's MaskedNode: Task.frozen) stay without."""
  replicated = NamedSharding(mesh, P())
  masked = lambda v: isinstance(v, optax.MaskedNode)
  return optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt_state,
                               param_shardings, transform_non_params=lambda _: replicated,
                               is_leaf=masked)


def abstract_train_state(task: Task, tx, mesh, rules=None, seed: int = 0):
  """(graphdef, abstract TrainState, TrainState of shardings) without allocating anything.

  `rules`: logical axis rules (default: those installed by `run`, i.e. the config's mesh.rules).
  """
  abstract_model = nnx.eval_shape(lambda: task.model_factory(nnx.Rngs(params=seed)))
  graphdef, abs_vars = nnx.split(abstract_model)
  param_shardings = sharding.named_shardings(abs_vars, mesh, rules).to_pure_dict()
  abs_params = abs_vars.to_pure_dict()
  abs_opt = jax.eval_shape(tx.init, abs_params)
  shardings = TrainState(
      step=NamedSharding(mesh, P()), params=param_shardings,
      opt_state=_opt_state_shardings(tx, abs_opt, param_shardings, mesh))
  abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abs_params, abs_opt)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return graphdef, abstract, shardings


def init_train_state(task: Task, tx, shardings, seed: int, loaded: dict | None = None):
  """Creates the train state directly sharded (no full replica on one device)."""

  def init(loaded_params):
    model = task.model_factory(nnx.Rngs(params=seed))
    if loaded_params is not None:  # Matching names overwrite the fresh init; shapes are checked.
      loading.merge_params(model, loaded_params)
    params = nnx.split(model)[1].to_pure_dict()
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  return jax.jit(init, out_shardings=shardings)(loaded)


# ----------------------------------------------------------------------------- steps


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def make_train_step(graphdef, loss_fn, tx, schedule, *, accum_steps: int = 1,
                    skip_nonfinite: bool = False, grad_shardings=None, optimizer_for=None):
  """train_step(state, batch, rng) -> (state, metrics); jit it with donate_argnums=0.

  `grad_shardings` (the parameters' shardings) constrains each gradient to its parameter's
  sharding, so XLA reduces fsdp-sharded gradients with a reduce-scatter (each device keeps
  its shard) instead of an all-reduce of the whole gradient followed by a slice.
  `optimizer_for(num_steps) -> (tx, schedule)` instead of tx and schedule: the step takes the
  schedule's step count as a fourth argument, `train_step(state, batch, rng, num_steps)` (a
  wall-clock run fixes it mid-run without recompiling).
  """

  def compute_loss(params, batch, rng):
    return loss_fn(nnx.merge(graphdef, params), batch, rng)

  value_and_grad = jax.value_and_grad(compute_loss, has_aux=True)

  def grad_fn(params, batch, rng):
    out, grads = value_and_grad(params, batch, rng)
    if grad_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    return out, grads

  def train_step(state: TrainState, batch: dict, rng: jax.Array, num_steps=None):
    tx_, schedule_ = (tx, schedule) if optimizer_for is None else optimizer_for(num_steps)
    rng = jax.random.fold_in(rng, state.step)
    if accum_steps == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i, i+A, i+2A, ...: each micro-batch spans all data shards.
      micro = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
          batch)

      def body(carry, xs):
        i, mb = xs
        (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return _tree_add(carry, (l, m, g)), None

      first = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(lambda: grad_fn(state.params, first, rng))
      (_, m_shape), g_shape = shapes
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           (shapes[0][0], m_shape, g_shape))
      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
      loss = loss / accum_steps
      grads = jax.tree.map(lambda g: g / accum_steps, grads)
    grad_norm = optax.global_norm(grads)
    params, opt_state = optim.apply_gradients(tx_, grads, state.opt_state, state.params)
    metrics = dict(metrics)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      metrics["skipped_steps"] = (1.0 - ok.astype(jnp.float32), jnp.float32(1.0))
    one = jnp.float32(1.0)
    metrics.update(loss=(loss, one), grad_norm=(grad_norm, one),
                   learning_rate=(schedule_(state.step), one),
                   nonfinite=(1.0 - ok.astype(jnp.float32), one))
    if "input_mask" in batch:  # Packing efficiency: real tokens / row slots.
      real = jnp.sum(batch["input_mask"] > 0).astype(jnp.float32)
      metrics["packing_efficiency"] = (real, jnp.float32(batch["input_mask"].size))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def jit_train_step(task: Task, config, graphdef, tx, schedule, shardings,
                   steps_argument: bool = False):
  """The jitted train step `run` executes (and `bert_jax.aot` compiles for TPU topologies).

  The state keeps `shardings` and is donated; the batch arrives sharded over the batch axes.
  steps_argument: the step takes the schedule's step count as a fourth argument (a wall-clock
  run, train.num_steps=0) instead of config.train.num_steps compiled in.
  """
  optimizer_for = None
  if steps_argument:

    def optimizer_for(num_steps):
      tx_n, schedule_n = optim.create_optimizer(config.optimizer, num_steps)
      return optim.freeze(tx_n, task.frozen), schedule_n
  return jax.jit(
      make_train_step(graphdef, task.loss_fn, tx, schedule,
                      accum_steps=config.optimizer.grad_accum_steps,
                      skip_nonfinite=config.train.skip_nonfinite, grad_shardings=shardings.params,
                      optimizer_for=optimizer_for),
      in_shardings=(shardings, None, None) + ((None,) if steps_argument else ()),
      out_shardings=(shardings, None), donate_argnums=0)


def make_eval_step(graphdef, loss_fn, eval_metrics=None):
  """eval_step(params, batch) -> metrics: eval_metrics(model, batch), else loss_fn's metrics
  without dropout. The batch is global, so the sums cover every process's rows."""

  def eval_step(params, batch):
    model = nnx.merge(graphdef, params)
    if eval_metrics is not None:
      return eval_metrics(model, batch)
    _, metrics = loss_fn(model, batch, None)
    return metrics

  return eval_step


# ----------------------------------------------------------------------------- host side


def to_global(batch: dict, mesh, rules=None) -> dict:
  """Process-local numpy batch -> global jax arrays sharded along the mesh's batch axes.

  A packed batch is checked first (attention.check_packed_batch): inconsistent segment ids stop
  with a PackingError before anything is compiled or run.
  """
  if "packed_segment_ids" in batch:
    attention.check_packed_batch(batch["packed_segment_ids"],
                                 batch.get("input_mask", batch.get("attention_mask")),
                                 batch.get("position_ids"))
  return {k: jax.make_array_from_process_local_data(
      sharding.batch_sharding(mesh, np.ndim(v), rules), np.asarray(v)) for k, v in batch.items()}


def host_means(sums: dict) -> dict[str, float]:
  """sum / weight of each scalar metric (array sums, e.g. histograms, are left to summarize)."""
  return {k: float(s) / float(w) if float(w) else float("nan") for k, (s, w) in sums.items()
          if np.ndim(s) == 0}


def _to_host(x):
  return float(x) if np.ndim(x) == 0 else np.asarray(x, np.float64)


def _accumulate(total: dict | None, metrics: dict) -> dict:
  metrics = {k: (_to_host(s), _to_host(w)) for k, (s, w) in jax.device_get(metrics).items()}
  if total is None:
    return metrics
  return {k: (total[k][0] + s, total[k][1] + w) for k, (s, w) in metrics.items()}


def check_workdir(workdir: str) -> None:
  if "://" in str(workdir):
    raise TrainingError(
        f"Workdir {workdir} is a URL; metrics, locks and exports need a file system path, so "
        f"mount the bucket (gcsfuse, or the GKE GCS FUSE driver; see docs/scaling.md) and pass "
        f"the mounted path, e.g. /gcs/BUCKET/run.")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise TrainingError(f"Workdir {workdir} is not writable ({e.strerror}); choose a directory "
                        f"you can write to with --workdir.") from None


def validate_batch(config, mesh) -> None:
  a = config.optimizer.grad_accum_steps
  data_par = sharding.batch_axis_size(mesh)
  for b in batch_sizes(config.train):
    name = ("train.batch_size" if b == config.train.batch_size
            else "the batch-size warm-up size (train.batch_size_warmup_min, doubled)")
    if b <= 0 or b % (a * data_par) or b % jax.process_count():
      raise TrainingError(
          f"{name}={b} must be a positive multiple of grad_accum_steps ({a}) x the "
          f"data-parallel size ({data_par} = mesh data x fsdp) and of the process count "
          f"({jax.process_count()}); change the batch size or the mesh.")


def batch_sizes(tc) -> list[int]:
  """The global batch sizes a run steps with: the warm-up's (train.batch_size_warmup_min,
  doubled while below train.batch_size) and then train.batch_size."""
  low, full = tc.get("batch_size_warmup_min", 0), tc.batch_size
  if not tc.get("batch_size_warmup_steps", 0) or not 0 < low < full:
    return [full]
  sizes = []
  while low < full:
    sizes.append(low)
    low *= 2
  return [*sizes, full]


def batch_size_at(tc, step: int) -> int:
  """The global batch of step `step` (0-based): the warm-up sizes take equal shares of
  train.batch_size_warmup_steps. A pure function of the step, so a resumed run feeds the same
  rows (the input pipeline still yields full batches; warm-up steps use their first rows)."""
  sizes, warm = batch_sizes(tc), tc.get("batch_size_warmup_steps", 0)
  if len(sizes) == 1 or step >= warm:
    return sizes[-1]
  return sizes[step * (len(sizes) - 1) // warm]


def _first_rows(batch: dict, global_rows: int, full: int) -> dict:
  """The process's share of a smaller global batch: its first rows of each local batch."""
  if global_rows == full:
    return batch
  keep = global_rows // jax.process_count()
  return {k: v[:keep] for k, v in batch.items()}


class _Preemption:
  """SIGTERM (TPU preemption, scheduler stop) asks the loop to save and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a notebook worker thread).
      self._previous = None

  def _handle(self, signum, frame):
    self.requested = True

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run(task: Task, config, workdir: str) -> dict:
  """Trains `task` per `config` in `workdir`, resuming from its latest checkpoint.

  Returns a summary: final step, train seconds, last train metrics, final eval metrics and
  `status` ("completed", "time_budget", "preempted").
  """
  check_workdir(workdir)
  lock = ckpt_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    # The config's logical axis rules hold for everything the run builds, traces and feeds.
    with sharding.use_rules(sharding.rules_of(config.mesh)):
      return _run_locked(task, config, workdir)
  finally:
    lock.release()


# Before a wall-clock run knows its step count, its schedule is built for this many steps (the
# warm-up it trains in until then does not depend on it).
_UNKNOWN_STEPS = 1 << 30


def _check_wall_clock(config, start_step: int) -> None:
  """A wall-clock run (train.num_steps=0) needs a budget and must measure within the warm-up."""
  tc = config.train
  if tc.num_steps < 0 or (tc.num_steps == 0 and not tc.max_train_seconds > 0):
    raise ConfigError(
        f"train.num_steps={tc.num_steps}: set a positive step count, or 0 together with "
        f"train.max_train_seconds to fit the schedule to the time budget.")
  fixed_at = (start_step + max(tc.get("batch_size_warmup_steps", 0) - start_step, 0) + 1
              + tc.get("measure_steps", 5))
  free = optim.steps_before_num_steps_matters(config.optimizer)
  if fixed_at > free:
    raise ConfigError(
        f"A wall-clock run (train.num_steps=0) fixes its step count after step {fixed_at} (the "
        f"batch-size warm-up, one compile step and train.measure_steps), but the learning rate "
        f"depends on the step count from step {free}; raise optimizer.warmup_steps to at least "
        f"{fixed_at}, or lower train.measure_steps.")


def _run_locked(task: Task, config, workdir: str) -> dict:
  tc = config.train
  mesh = sharding.make_mesh(dict(config.mesh))
  validate_batch(config, mesh)
  # Before the checkpointer exists: a refusal after it leaves orbax's threads racing the
  # interpreter's shutdown, which can print a traceback after the one-line error.
  optim.validate(config.optimizer)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                       async_save=config.checkpoint.async_save)
  latest = checkpointer.latest_step()
  meta = checkpointer.read_meta(latest) if latest is not None else {}
  # The step count the schedule decays to: the config's, else the one a wall-clock run fixed
  # and stored with its checkpoints, else None until measured (_check_wall_clock).
  num_steps = tc.num_steps or meta.get("schedule_steps")
  if not num_steps:
    _check_wall_clock(config, latest or 0)
  tx, schedule = optim.create_optimizer(config.optimizer, num_steps or _UNKNOWN_STEPS)
  tx = optim.freeze(tx, task.frozen)
  graphdef, abstract, shardings = abstract_train_state(task, tx, mesh, seed=tc.seed)
  writer = MetricWriter(workdir, num_steps or 0)
  identity = dict(task.identity, task=task.name)

  data_state = None
  if latest is not None:
    if meta.get("identity") != identity:
      raise TrainingError(
          f"Workdir {workdir} holds a checkpoint (step {latest}) of a different model or task "
          f"({_diff(meta.get('identity'), identity)}); use a new --workdir, or start from it "
          f"with --config.init_from. Nothing was deleted.")
    state, data_state, _ = checkpointer.restore(latest, abstract)
    writer.info(f"Resumed from {checkpointer.directory}/{latest}.")
  else:
    loaded = task.init_params() if task.init_params is not None else None
    with jax.set_mesh(mesh):
      state = init_train_state(task, tx, shardings, tc.seed, loaded)

  wall_clock = not tc.num_steps  # The step count is an argument of the one compiled step.
  jitted_step = multihost.SyncedCompile(
      jit_train_step(task, config, graphdef, tx, schedule, shardings, steps_argument=wall_clock),
      "train_step")

  def train_step(state, batch, rng):
    if not wall_clock:
      return jitted_step(state, batch, rng)
    return jitted_step(state, batch, rng, jnp.int32(num_steps or _UNKNOWN_STEPS))

  # Replicated results: every process reads the same global sums.
  eval_step = multihost.SyncedCompile(
      jax.jit(make_eval_step(graphdef, task.loss_fn, task.eval_metrics),
              out_shardings=NamedSharding(mesh, P())), "eval_step")
  rng = jax.random.key(tc.seed)

  it = task.train_iter()
  if data_state is not None:
    it.set_state(data_state)

  start_step = int(jax.device_get(state.step))
  peak = tc.peak_flops_per_device or flops_lib.CHIPS[flops_lib.chip_name()]["peak_flops"]
  preempt = _Preemption()
  preempt.install()
  status, step, window, t_window, pending = "completed", start_step, None, time.time(), None
  window_rows = 0  # Examples trained on since the last log line (batch sizes may vary).
  window_full = 0.0  # The same in full-length rows (length-bucketed batches are shorter).
  last_train: dict[str, float] = {}
  t_start = time.time()
  eval_results: dict[str, float] = {}
  # Wall-clock run: time steps [measure_from, measure_from + measure_steps) at the full batch
  # size (the first full-size step compiles), then fix num_steps from the time left.
  measure_from = max(start_step, tc.get("batch_size_warmup_steps", 0)) + 1
  measure_steps = tc.get("measure_steps", 5)
  t_measure: dict[str, float] = {}

  def fix_num_steps(at_step: int) -> None:
    nonlocal num_steps
    step_s = (t_measure["end"] - t_measure["start"]) / measure_steps
    num_steps = optim.wall_clock_steps(at_step, t_measure["end"] - t_start,
                                       tc.max_train_seconds, step_s)
    writer.total_steps = num_steps
    writer.info(f"Wall-clock schedule: {step_s:.3f} s/step over steps {measure_from + 1}-"
                f"{at_step} (step {measure_from} with its compile: {t_measure['first']:.1f} s), "
                f"so the schedule ends at step {num_steps} (train.max_train_seconds="
                f"{tc.max_train_seconds:g}); stored with the checkpoints for resuming.")

  def pull(pending_metrics, at_step):
    nonlocal window
    window = _accumulate(window, pending_metrics)
    bad = window["nonfinite"][0] > 0 and not tc.skip_nonfinite
    if bad:
      raise TrainingError(
          f"Loss or gradient became NaN/Inf at step {at_step}; stopped without saving it. The "
          f"last good checkpoint is kept (step {checkpointer.latest_step()}); lower the learning "
          f"rate or set train.skip_nonfinite=True.")

  def save(at_step, d_state, force=False):
    checkpointer.save(at_step, state, d_state,
                      {"identity": identity, "step": at_step, "config": config.to_dict(),
                       "schedule_steps": num_steps}, force=force)

  def log_window():
    nonlocal window, t_window, last_train, window_rows, window_full
    dt = time.time() - t_window
    n = window["loss"][1]
    last_train = task_means(task, window)
    last_train.pop("nonfinite", None)
    last_train["steps_per_sec"] = n / dt
    last_train["tokens_per_sec"] = window_full * task.tokens_per_example / dt
    last_train["mfu"] = window_full * task.flops_per_example / dt / (peak * jax.device_count())
    last_train["batch_size"] = window_rows / n
    writer.write(step, last_train, "train/")
    writer.progress(step, start_step, last_train, tc.max_train_seconds or None,
                    time.time() - t_start)
    window, t_window, window_rows, window_full = None, time.time(), 0, 0.0

  def at_end(s: int) -> bool:
    return num_steps is not None and s >= num_steps

  try:
    with jax.set_mesh(mesh):
      while not at_end(step):
        if preempt.requested or (jax.process_count() > 1
                                 and checkpointer.manager.reached_preemption(step)):
          status = "preempted"
          break
        if tc.max_train_seconds and time.time() - t_start > tc.max_train_seconds:
          status = "time_budget"
          break
        rows = batch_size_at(tc, step)
        batch = to_global(_first_rows(next(it), rows, tc.batch_size), mesh)
        d_state = it.get_state()
        measuring = num_steps is None and step + 1 in (measure_from,
                                                       measure_from + measure_steps)
        if measuring and step + 1 == measure_from:
          t_measure["dispatch"] = time.time()
        state, metrics = train_step(state, batch, rng)
        if pending is not None:
          pull(pending, step)
        pending = metrics
        step += 1
        window_rows += rows
        window_full += rows * _width_share(task, batch)
        if measuring:  # Wait for this step, so the clock brackets whole steps.
          jax.block_until_ready(metrics)
          now = time.time()
          if step == measure_from:
            t_measure.update(first=now - t_measure["dispatch"], start=now)
          else:
            t_measure["end"] = now
            fix_num_steps(step)
        save_now = step % config.checkpoint.every_steps == 0
        if save_now or step % tc.log_every == 0 or at_end(step):
          pull(pending, step)
          pending = None
        if save_now:
          save(step, d_state)
        if step % tc.log_every == 0 or at_end(step):
          log_window()
        if tc.eval_every and step % tc.eval_every == 0 and not at_end(step):
          eval_results = evaluate(task, eval_step, state.params, mesh, graphdef, step)
          writer.write(step, eval_results, "eval/")
          t_window = time.time()
      if pending is not None:
        pull(pending, step)
      if window is not None:  # Steps since the last log line (time budget, preemption).
        log_window()
      train_seconds = time.time() - t_start
      if step > start_step or latest is None:
        if checkpointer.latest_step() != step:
          save(step, it.get_state(), force=True)
      checkpointer.wait()
      if status != "preempted" and (task.eval_batches or task.evaluate):
        eval_results = evaluate(task, eval_step, state.params, mesh, graphdef, step)
        writer.write(step, eval_results, "eval/")
  finally:
    preempt.uninstall()
    checkpointer.close()
    writer.close()
  return {"status": status, "step": step, "start_step": start_step, "num_steps": num_steps,
          "train_examples": sum(batch_size_at(tc, s) for s in range(step)),
          "train_seconds": train_seconds, "train": last_train, "eval": eval_results,
          "state": state, "graphdef": graphdef, "mesh": mesh}


def _width_share(task: Task, batch: dict) -> float:
  """A batch's row length over the full one (task.seq_len) the per-example figures are for."""
  ids = batch.get("input_ids")
  if not task.seq_len or ids is None or np.ndim(ids) != 2:
    return 1.0
  return ids.shape[1] / task.seq_len


def task_means(task: Task, sums: dict) -> dict[str, float]:
  means = host_means(sums)
  return task.summarize(means, sums) if task.summarize else means


def evaluate(task: Task, eval_step, params, mesh, graphdef=None, step: int = 0
             ) -> dict[str, float]:
  """task.evaluate(model, mesh, step), else eval_step's sums over task.eval_batches()."""
  if task.evaluate is not None:
    return task.evaluate(nnx.merge(graphdef, params), mesh, step)
  total = None
  for host_batch in task.eval_batches():
    total = _accumulate(total, eval_step(params, to_global(host_batch, mesh)))
  if total is None:
    return {}
  return task_means(task, total)


def _diff(old: dict | None, new: dict) -> str:
  """The fields that differ between two identities (nested dicts compared leaf by leaf)."""
  if not isinstance(old, dict):
    return "no identity recorded"
  old_flat, new_flat = model_dir.flatten(old), model_dir.flatten(new)
  keys = sorted(set(old_flat) | set(new_flat))
  diffs = [f"{k}: {old_flat.get(k)!r} vs {new_flat.get(k)!r}" for k in keys
           if old_flat.get(k) != new_flat.get(k)]
  return "; ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")


def param_count(abstract_params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
