"""Device mesh and logical-axis rules (the MaxText scheme: name axes logically, map them once).

Mesh axes:
  "data"   pure data parallelism (parameters replicated)
  "fsdp"   data parallelism with parameters and optimizer state sharded (ZeRO-3 / FSDP)
  "tensor" tensor (model) parallelism over heads, FFN width and vocabulary

A batch is split over ("data", "fsdp"); parameters over "fsdp" (model width) and "tensor".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_AXIS_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "norm": None,
    "layers": None,  # the stacking axis of scanned blocks: each device holds its shard of every layer
}


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pins the leading (batch) dimension of an activation to the batch axes of the ambient mesh.

    A no-op outside ``jax.set_mesh`` (eager calls, tests without a mesh). Without it, GSPMD may keep
    FSDP-sharded activations split over the model width and replicate the batch on every device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes or x.shape[0] % int(np.prod([mesh.shape[a] for a in axes])):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes if len(axes) > 1 else axes[0]))


class MeshError(ValueError):
    """A mesh shape that does not match the available devices."""


def mesh_shape(data: int = 1, fsdp: int = -1, tensor: int = 1, n_devices: int | None = None) -> tuple[int, int, int]:
    """Resolves one ``-1`` entry to fill ``n_devices``; raises MeshError naming the sizes otherwise."""
    n_devices = jax.device_count() if n_devices is None else n_devices
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or (v < 1 and v != -1)}
    if bad:
        raise MeshError(f"mesh sizes {bad}: each must be a positive integer or -1 (fill the remaining devices)")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise MeshError(f"mesh sizes {sizes}: at most one axis may be -1")
    fixed = int(np.prod([v for v in sizes.values() if v != -1]))
    if free:
        if n_devices % fixed:
            raise MeshError(f"mesh sizes {sizes}: {n_devices} devices are not divisible by {fixed}")
        sizes[free[0]] = n_devices // fixed
    if int(np.prod(list(sizes.values()))) != n_devices:
        raise MeshError(
            f"mesh sizes {sizes} multiply to {int(np.prod(list(sizes.values())))}, but {n_devices} devices are in use"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over ``devices`` (default: all devices).

    Axis types are Auto: shardings of parameters and inputs are given explicitly and XLA (GSPMD)
    propagates them through the step.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules: dict[str, Any] = LOGICAL_AXIS_RULES) -> P:
    """Maps a PartitionSpec of logical names to mesh axes for an array of ``shape``.

    A dimension stays replicated when its size is not divisible by the mesh axes it maps to, or when
    those mesh axes already shard an earlier dimension (tiny test models and odd sizes still work).
    """
    used: set[str] = set()
    out = []
    for dim_size, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in used)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or dim_size % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    while out and out[-1] is None:  # canonical form: P(None, None) and P() are the same sharding, but
        out.pop()  # jit caches compare specs literally
    return P(*out)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: dict[str, Any] = LOGICAL_AXIS_RULES):
    """NamedShardings for every variable of an (abstract) nnx state, from its logical axis metadata."""
    specs = nnx.get_partition_spec(abstract_state)
    return jax.tree.map(
        lambda leaf, spec: NamedSharding(mesh, logical_to_mesh_spec(spec, leaf.shape, mesh, rules)),
        abstract_state,
        specs,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def place(module: nnx.Module, mesh: Mesh) -> None:
    """Puts every variable of ``module`` in its sharding over ``mesh`` (from its logical axes), in place."""
    state = nnx.state(module)
    nnx.update(module, jax.device_put(state, state_shardings(state, mesh)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of ``[B, ...]`` batch arrays: rows split over ("data", "fsdp")."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays sharded over the batch axes."""
    spec = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(spec, v) for k, v in local.items()}
