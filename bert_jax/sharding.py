"""Meshes and the one place where logical axis names meet mesh axes.

Parameters carry logical names (layers.LOGICAL_AXES_KEY); activations are constrained with the
`batch` / `length` names. `DEFAULT_RULES` maps each name to mesh axes `data`, `fsdp`, `tensor`.
Changing a sharding is a change of rules or mesh sizes in the config, never of model code.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from bert_jax.layers import LOGICAL_AXES_KEY

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
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


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves sizes for (data, fsdp, tensor); a single -1 takes the remaining devices."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"Mesh sizes {dict(zip(MESH_AXES, shape))} do not divide the "
                       f"{num_devices} devices; make the fixed axes divide the device count.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices or min(shape) < 1:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available; set one axis to -1 to use the rest.")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # noqa: BLE001 - CPU and unusual topologies: a plain reshape is fine.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None] | None, rules=DEFAULT_RULES) -> P:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
  if names is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (e.g. 2 labels over tensor=4)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def param_specs(abstract_state, rules=DEFAULT_RULES):
  """PartitionSpecs for a state whose Variables carry logical axis names (others replicated)."""

  def spec(v):
    names = v.get_metadata().get(LOGICAL_AXES_KEY) if isinstance(v, nnx.Variable) else None
    return logical_to_spec(names, rules)

  return jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def named_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of a state (Variables or plain arrays / ShapeDtypeStructs)."""

  def sharding(v):
    if isinstance(v, nnx.Variable):
      names = v.get_metadata().get(LOGICAL_AXES_KEY)
      shape = v.shape
    else:
      names, shape = None, getattr(v, "shape", ())
    return NamedSharding(mesh, _fit_spec(logical_to_spec(names, rules), tuple(shape), mesh))

  return jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Batch-major arrays: dim 0 over the batch axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def batch_axis_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  spec = logical_to_spec(("batch",), rules)[0]
  names = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return math.prod(mesh.shape[a] for a in names)
