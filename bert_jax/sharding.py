"""Meshes and the one place where logical axis names meet mesh axes.

Parameters carry logical names (layers.LOGICAL_AXES_KEY); the encoder constrains its activations
at every layer boundary to `("batch", "length", "embed")` (`constrain`, called by modeling.py).
A list of rules maps each name to mesh axes `data`, `fsdp`, `tensor`: `DEFAULT_RULES` is the
default of the config field `mesh.rules` (configs/*.py), and `train.run` installs the config's
rules (`nnx.logical_axis_rules`) around everything it runs, so every function here that is not
given `rules` uses them. Changing a sharding is a change of `mesh.rules` or of mesh sizes, never
of model code, e.g. `--config.mesh.rules="(('batch', ('data', 'fsdp')), ('embed', None), ...)"`.

`length` maps to None (sequences are not split) and is kept on purpose: it is the activation
constraint's second axis, so a rule such as `('length', 'tensor')` splits sequences without code
changes. A mesh axis that does not divide a parameter's dimension (vocab 30,522 over tensor=4)
cannot shard it: that dimension is replicated and a warning names the parameter (`indivisible`
lists them; `bert-jax-aot` reports them).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bert_jax.errors import ConfigError
from bert_jax.layers import LOGICAL_AXES_KEY

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated). Later pairs win.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    # The square D x D kernels of the pooler and the MLM transform. Sharding their output over
    # `tensor` while the tied embedding's D is on `fsdp` made XLA's SPMD partitioner return wrong
    # MLM gradients on a (2, 2, 2) mesh (loss right, gradients off by 0.1); they are small
    # (2 D^2 parameters), so they stay replicated.
    ("hidden", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("max_len", None),
    ("type_vocab", None),
    ("classes", None),
)

ACTIVATION_AXES = ("batch", "length", "embed")  # The encoder's [B, L, D] between layers.

_log = logging.getLogger(__name__)
_warned: set[tuple] = set()


def normalize_rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Rules as hashable pairs; accepts lists (a config read back from JSON). Checks axis names."""
  out = []
  for pair in rules:
    if isinstance(pair, str) or len(pair) != 2:
      raise ConfigError(f"mesh.rules entry {pair!r} is not a (logical name, mesh axis) pair; "
                        f"write e.g. ('vocab', 'tensor') or ('embed', None).")
    name, target = pair
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
      raise ConfigError(f"mesh.rules maps {name!r} to {bad[0]!r}, which is not a mesh axis; use "
                        f"{', '.join(MESH_AXES)}, a tuple of them, or None.")
    out.append((str(name), target if isinstance(target, str) or target is None else axes))
  return tuple(out)


def current_rules(rules=None):
  """`rules` if given, else the rules installed by `use_rules`, else DEFAULT_RULES."""
  if rules is not None:
    return normalize_rules(rules)
  return flax_spmd.get_logical_axis_rules() or DEFAULT_RULES


@contextlib.contextmanager
def use_rules(rules):
  """Installs `rules` (e.g. a config's mesh.rules) for this thread (`nnx.logical_axis_rules`)."""
  with nnx.logical_axis_rules(normalize_rules(rules)):
    yield


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves sizes for (data, fsdp, tensor); a single -1 takes the remaining devices."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  named = lambda: dict(zip(MESH_AXES, shape, strict=True))  # noqa: E731
  if shape.count(-1) > 1:
    raise ConfigError(f"At most one mesh axis may be -1, got {named()}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"Mesh sizes {named()} do not divide the "
                       f"{num_devices} devices; make the fixed axes divide the device count.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices or min(shape) < 1:
    raise ConfigError(f"Mesh {named()} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available; set one axis to -1 to use the rest.")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all).

  `sizes` may be a config's whole `mesh` section (its `rules` are ignored here).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # noqa: BLE001 - CPU and unusual topologies: a plain reshape is fine.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_of(mesh_config) -> tuple:
  """The rules of a config's `mesh` section (DEFAULT_RULES when it has none)."""
  rules = mesh_config.get("rules") if hasattr(mesh_config, "get") else None
  return normalize_rules(DEFAULT_RULES if rules is None else rules)


def logical_to_spec(names: Sequence[str | None] | None, rules=None) -> P:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
  if names is None:
    return P()
  table = dict(current_rules(rules))
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def fit_spec(spec: P, shape: tuple[int, ...], mesh_shape: dict[str, int]
             ) -> tuple[P, list[tuple[int, int, tuple[str, ...], int]]]:
  """Drops mesh axes that do not divide a dimension (or that the mesh lacks).

  Returns the spec that fits and what was dropped: (dim index, dim size, mesh axes, their size).
  """
  out, dropped = [], []
  entries = (tuple(spec) + (None,) * len(shape))[:len(shape)]
  for i, (dim, entry) in enumerate(zip(shape, entries, strict=True)):
    names = tuple(a for a in _axes(entry) if a in mesh_shape)
    size = math.prod(mesh_shape[a] for a in names)
    if names and dim % size:
      dropped.append((i, dim, names, size))
      names = ()
    out.append(None if not names else names[0] if len(names) == 1 else names)
  return P(*out), dropped


def _param_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _leaf_spec(v, rules) -> tuple[P, tuple[int, ...]]:
  if isinstance(v, nnx.Variable):
    return logical_to_spec(v.get_metadata().get(LOGICAL_AXES_KEY), rules), tuple(v.shape)
  return P(), tuple(getattr(v, "shape", ()))


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def indivisible(abstract_state, mesh: Mesh, rules=None) -> list[dict]:
  """Parameters whose rules ask for a mesh axis that does not divide the dimension.

  One entry per (parameter, dimension): {param, dim, size, mesh_axes, mesh_size}; that
  dimension is replicated over those axes instead.
  """
  rows = []
  for path, v in jax.tree_util.tree_leaves_with_path(abstract_state, is_leaf=_is_var):
    spec, shape = _leaf_spec(v, rules)
    for i, dim, names, size in fit_spec(spec, shape, dict(mesh.shape))[1]:
      rows.append({"param": _param_name(path), "dim": i, "size": dim, "mesh_axes": list(names),
                   "mesh_size": size})
  return rows


def describe_indivisible(row: dict) -> str:
  axes = " x ".join(row["mesh_axes"])
  return (f"{row['param']} dimension {row['dim']} (size {row['size']}) is not divisible by mesh "
          f"axis {axes} (size {row['mesh_size']}), so it is replicated over {axes}")


def named_shardings(abstract_state, mesh: Mesh, rules=None):
  """NamedShardings for every leaf of a state (Variables or plain arrays / ShapeDtypeStructs).

  A mesh axis that does not divide a dimension is dropped for that dimension, with a warning
  logged once per parameter and mesh.
  """
  for row in indivisible(abstract_state, mesh, rules):
    key = (row["param"], row["dim"], row["size"], tuple(row["mesh_axes"]), row["mesh_size"])
    if key not in _warned:
      _warned.add(key)
      _log.warning("%s; pad it or change mesh.rules to shard it.", describe_indivisible(row))

  def sharding(v):
    spec, shape = _leaf_spec(v, rules)
    return NamedSharding(mesh, fit_spec(spec, shape, dict(mesh.shape))[0])

  return jax.tree.map(sharding, abstract_state, is_leaf=_is_var)


def batch_sharding(mesh: Mesh, ndim: int, rules=None) -> NamedSharding:
  """Batch-major arrays: dim 0 over the batch axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def batch_axis_size(mesh: Mesh, rules=None) -> int:
  spec = logical_to_spec(("batch",), rules)[0]
  return math.prod(mesh.shape[a] for a in _axes(spec))


def constrain(x: jax.Array, names: Sequence[str | None], rules=None) -> jax.Array:
  """`with_sharding_constraint` of an activation to its logical axes, under the current mesh.

  A no-op without a mesh (`jax.set_mesh`), so model code stays the same on one device, and under
  a mesh with Explicit axes (there shardings are part of the types); axes that do not divide a
  dimension (a batch of 1 at inference) are left out.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not mesh.are_all_axes_auto:
    return x
  spec, _ = fit_spec(logical_to_spec(names, rules), tuple(x.shape), dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)
