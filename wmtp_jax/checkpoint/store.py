"""Orbax storage of model parameters, restored straight into a mesh's shardings.

A converted (or exported) model directory holds:
  ``model_config.json``  the ``ModelConfig`` (Meta ``params.json`` names) plus provenance
  ``params/``            an Orbax PyTree checkpoint of the parameters with one entry per block, Meta's layout
                         (``layers/3/attention/wq``, ``heads/0/...``, ``output``, ``value_head/kernel``)

In memory the model keeps its blocks stacked (``layers/attention/wq`` is ``[n_trunk_layers, d, d]``; see
``wmtp_jax.model.mtp``); ``to_disk_layout`` / ``from_disk_layout`` map between the two. Train-state
checkpoints (``wmtp_jax.train.loop``) store the stacked layout as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import orbax.checkpoint.experimental.v1 as ocp

from wmtp_jax import sharding
from wmtp_jax.model import ModelConfig, MTPTransformer
from wmtp_jax.model.mtp import STACKED_GROUPS

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names file and weight."""


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and ShapeDtypeStruct state of ``MTPTransformer(cfg)``; allocates nothing."""
    return nnx.split(nnx.eval_shape(lambda: MTPTransformer(cfg, rngs=nnx.Rngs(0))))


def param_tree(state: nnx.State) -> dict[str, Any]:
    """nnx state -> nested dict with string keys (the layout stored by Orbax)."""
    return nnx.to_pure_dict(state)


def flat_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/attention/wq": shape, ...}``: every parameter of ``MTPTransformer(cfg)`` in the on-disk
    (per-block) layout."""
    _, state = abstract_model(cfg)
    disk = to_disk_layout(flatten(param_tree(state)), _block_struct)
    return {name: tuple(leaf.shape) for name, leaf in disk.items()}


def to_disk_layout(flat: dict[str, Any], take=lambda x, i: x[i]) -> dict[str, Any]:
    """Model layout -> on-disk layout: a stacked ``layers/attention/wq`` ``[L, ...]`` becomes
    ``layers/0/attention/wq`` ... ``layers/{L-1}/attention/wq``; other names are kept. ``take(x, i)``: block
    ``i`` of a stacked leaf (default: ``x[i]``)."""
    out = {}
    for name, x in flat.items():
        group, _, rest = name.partition("/")
        if group in STACKED_GROUPS:
            out.update({f"{group}/{i}/{rest}": take(x, i) for i in range(x.shape[0])})
        else:
            out[name] = x
    return out


def from_disk_layout(disk: dict[str, Any], target: dict[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
    """On-disk layout -> model layout: the blocks of each stacked leaf of ``target`` (flat model names,
    with shardings) are stacked into that sharding, one leaf at a time (``disk`` entries are consumed)."""
    out = {}
    for name, leaf in target.items():
        group, _, rest = name.partition("/")
        if group in STACKED_GROUPS:
            blocks = [disk.pop(f"{group}/{i}/{rest}") for i in range(leaf.shape[0])]
            out[name] = jax.jit(_stack, out_shardings=leaf.sharding)(*blocks)
            del blocks
        else:
            out[name] = disk.pop(name)
    return out


def _stack(*blocks):
    return jnp.stack(blocks)


def _block_struct(leaf, i: int) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding of block ``i`` of a stacked (abstract) leaf."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def write_config(ckpt_dir: str | os.PathLike, cfg: ModelConfig, **provenance) -> None:
    path = Path(ckpt_dir) / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model": cfg.to_params_json(), **provenance}, indent=2) + "\n")
    os.replace(tmp, path)


def read_config(ckpt_dir: str | os.PathLike, **overrides) -> ModelConfig:
    """The ``ModelConfig`` stored beside the parameters; ``overrides`` set dtype, remat, ..."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_FILE}; expected a directory written by "
                              "convert_torch_checkpoint or save_model")
    try:
        values = json.loads(path.read_text())["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: expected a JSON object with a 'model' entry ({e})") from None
    return ModelConfig.from_dict({**values, **overrides}, source=str(path))


def save_model(model: MTPTransformer, ckpt_dir: str | os.PathLike, **provenance) -> None:
    """Writes ``model``'s parameters and config under ``ckpt_dir`` (all processes must call it)."""
    ckpt_dir = Path(ckpt_dir).absolute()  # Orbax requires absolute paths
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    disk = to_disk_layout(flatten(param_tree(nnx.state(model, nnx.Param))))
    ocp.save(ckpt_dir / PARAMS_DIR, unflatten(disk), overwrite=True)
    if jax.process_index() == 0:
        write_config(ckpt_dir, model.cfg, **provenance)


def check_stored_shapes(params_dir: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Raises CheckpointError naming every missing, unexpected or mis-shaped weight."""
    try:
        stored = flatten(ocp.metadata(params_dir).metadata)
    except Exception as e:  # Orbax raises several types for a missing or foreign directory
        raise CheckpointError(f"{params_dir}: not an Orbax parameter checkpoint ({type(e).__name__}: {e})") from None
    problems = [f"missing weight {k} (expected shape {expected[k]})" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected weight {k} (shape {tuple(stored[k].shape)})" for k in sorted(set(stored) - set(expected))]
    problems += [f"weight {k}: checkpoint shape {tuple(stored[k].shape)}, model expects {expected[k]}"
                 for k in sorted(set(stored) & set(expected)) if tuple(stored[k].shape) != expected[k]]
    if problems:
        raise CheckpointError(f"{params_dir} does not match the model:\n  " + "\n  ".join(problems))


def load_model(ckpt_dir: str | os.PathLike, mesh: Mesh | None = None, **config_overrides) -> MTPTransformer:
    """Restores a converted or exported model directly into ``mesh``'s parameter shardings.

    Args:
      ckpt_dir: directory with ``model_config.json`` and ``params/``.
      mesh: target mesh; default: an FSDP mesh over all devices. The device count may differ from the
        one that wrote the checkpoint.
      config_overrides: ``ModelConfig`` fields that do not change shapes (dtype, param_dtype, remat).
    Raises:
      CheckpointError: no config, not an Orbax checkpoint, or missing / unexpected / mis-shaped weights
        (each named with both shapes).
    """
    ckpt_dir = Path(ckpt_dir).absolute()  # Orbax requires absolute paths
    cfg = read_config(ckpt_dir, **config_overrides)
    mesh = mesh or sharding.make_mesh()
    graphdef, abstract_state = abstract_model(cfg)
    params_dir = ckpt_dir / PARAMS_DIR
    shardings = sharding.state_shardings(abstract_state, mesh)
    target = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                          param_tree(abstract_state), param_tree(shardings))
    disk_target = to_disk_layout(flatten(target), _block_struct)
    check_stored_shapes(params_dir, {k: tuple(v.shape) for k, v in disk_target.items()})
    restored = flatten(ocp.load(params_dir, unflatten(disk_target)))
    nnx.replace_by_pure_dict(abstract_state, unflatten(from_disk_layout(restored, flatten(target))))
    return nnx.merge(graphdef, abstract_state)

