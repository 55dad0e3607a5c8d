"""Orbax storage of model parameters, restored straight into a mesh's shardings.

A converted (or exported) model directory holds:
  ``model_config.json``  the ``ModelConfig`` (Meta ``params.json`` names) plus provenance
  ``params/``            an Orbax PyTree checkpoint of the parameters, keyed like ``MTPTransformer``'s
                         state (``layers/3/attention/wq``, ``heads/0/...``, ``output``, ``value_head/kernel``)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

import orbax.checkpoint.experimental.v1 as ocp

from wmtp_jax import sharding
from wmtp_jax.model import ModelConfig, MTPTransformer

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names file and weight."""


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and ShapeDtypeStruct state of ``MTPTransformer(cfg)``; allocates nothing."""
    return nnx.split(nnx.eval_shape(lambda: MTPTransformer(cfg, rngs=nnx.Rngs(0))))


def param_tree(state: nnx.State) -> dict[str, Any]:
    """nnx state -> nested dict with string keys (the layout stored by Orbax)."""
    return _str_keys(nnx.to_pure_dict(state))


def flat_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/attention/wq": shape, ...}`` for every parameter of ``MTPTransformer(cfg)``."""
    _, state = abstract_model(cfg)
    return {name: tuple(leaf.shape) for name, leaf in flatten(param_tree(state)).items()}


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
    ocp.save(ckpt_dir / PARAMS_DIR, param_tree(nnx.state(model, nnx.Param)), overwrite=True)
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
    expected = {k: tuple(v.shape) for k, v in flatten(param_tree(abstract_state)).items()}
    check_stored_shapes(params_dir, expected)
    shardings = sharding.state_shardings(abstract_state, mesh)
    target = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                          param_tree(abstract_state), param_tree(shardings))
    restored = ocp.load(params_dir, target)
    nnx.replace_by_pure_dict(abstract_state, _int_keys(restored))
    return nnx.merge(graphdef, abstract_state)


def _str_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree):
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree

