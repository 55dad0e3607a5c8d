"""Orbax storage of model parameters, restored straight into a mesh's shardings.

A converted (or exported) model directory holds:
  ``model_config.json``  the ``ModelConfig`` (Meta ``params.json`` names) plus provenance
  ``params/``            an Orbax PyTree checkpoint of the parameters with one entry per block, Meta's layout
                         (``layers/3/attention/wq``, ``heads/0/...``, ``output``, ``value_head/kernel``)

In memory the model keeps its blocks stacked and each projection is a module holding a ``kernel``
(``layers/attention/wq/kernel`` is ``[n_trunk_layers, d, d]``; see ``wmtp_jax.model.mtp``). One table maps the
two namings (``disk_name`` / ``model_name``), and ``to_disk_layout`` / ``from_disk_layout`` map the layouts.
Train-state checkpoints (``wmtp_jax.train.trainer``) store the in-memory layout as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wmtp_jax import sharding
from wmtp_jax.distributed import is_main_process
from wmtp_jax.files import atomic_write_text
from wmtp_jax.model import ModelConfig, MTPTransformer
from wmtp_jax.model.mtp import STACKED_GROUPS

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
# Modules whose weight is stored on disk under the module's own name (Meta's ``wq``, ``output``, ...) and in
# memory as ``{module}/kernel``; every other parameter has the same name in both places.
PROJECTIONS = frozenset({"wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"})


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


def disk_name(name: str) -> str:
    """In-memory parameter name -> on-disk (Meta) name: ``layers/attention/wq/kernel`` -> ``layers/attention/wq``."""
    module, _, leaf = name.rpartition("/")
    return module if leaf == "kernel" and module.rpartition("/")[2] in PROJECTIONS else name


def model_name(name: str) -> str:
    """On-disk (Meta) parameter name -> in-memory name; the inverse of ``disk_name``."""
    return f"{name}/kernel" if name.rpartition("/")[2] in PROJECTIONS else name


def to_disk_layout(flat: dict[str, Any], take=lambda x, i: x[i]) -> dict[str, Any]:
    """Model layout -> on-disk layout: a stacked ``layers/attention/wq/kernel`` ``[L, ...]`` becomes
    ``layers/0/attention/wq`` ... ``layers/{L-1}/attention/wq``; other names are only renamed by ``disk_name``.
    ``take(x, i)``: block ``i`` of a stacked leaf (default: ``x[i]``)."""
    out = {}
    for name, x in flat.items():
        name = disk_name(name)
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
        group, _, rest = disk_name(name).partition("/")
        if group in STACKED_GROUPS:
            blocks = [disk.pop(f"{group}/{i}/{rest}") for i in range(leaf.shape[0])]
            out[name] = jax.jit(_stack, out_shardings=leaf.sharding)(*blocks)
            del blocks
        else:
            out[name] = disk.pop(disk_name(name))
    return out


def _stack(*blocks):
    return jnp.stack(blocks)


def _block_struct(leaf, i: int) -> jax.ShapeDtypeStruct:
    """Shape, dtype and sharding of block ``i`` of a stacked (abstract) leaf."""
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}`` (``flax.traverse_util.flatten_dict`` with "/" joined string keys)."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` -> nested dict; the inverse of ``flatten``."""
    return traverse_util.unflatten_dict(flat, sep="/")


def write_config(ckpt_dir: str | os.PathLike, cfg: ModelConfig, **provenance) -> None:
    atomic_write_text(
        Path(ckpt_dir) / CONFIG_FILE, json.dumps({"model": cfg.to_params_json(), **provenance}, indent=2) + "\n"
    )


def read_config(ckpt_dir: str | os.PathLike, **overrides) -> ModelConfig:
    """The ``ModelConfig`` stored beside the parameters; ``overrides`` set dtype, remat, ..."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt_dir}: no {CONFIG_FILE}; expected a directory written by convert_torch_checkpoint or save_model"
        )
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
    if is_main_process():
        write_config(ckpt_dir, model.cfg, **provenance)


def partial_load() -> ocp.Context:
    """An Orbax context in which a load may name only some of the stored leaves (one tensor, or a train state's
    parameters without its optimizer state)."""
    return ocp.Context(
        pytree_options=ocp.options.PyTreeOptions(loading=ocp.options.PyTreeOptions.Loading(partial_load=True))
    )


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "wmtp_jax LoRA adapters v1"


def is_adapter_dir(path) -> bool:
    """Whether ``path`` holds LoRA adapters plus a base reference (``save_adapters``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file() and (Path(path) / PARAMS_DIR).is_dir()


def save_adapters(model: MTPTransformer, ckpt_dir: str | os.PathLike, base_model, lora: dict, **provenance) -> None:
    """Writes ``model``'s LoRA adapters and value head (not its frozen base) under ``ckpt_dir`` (all processes must
    call it): ``params/`` (in-memory names, e.g. ``layers/attention/wq/lora/lora_a`` ``[L, in, rank]``) and
    ``adapter_config.json`` naming the base model directory (``base_model``, stored absolute), the ``lora``
    settings (``model.lora``) and the adapted model's config. ``load_policy`` and ``export_checkpoint`` read it
    back onto that base; the base must stay where it is."""
    ckpt_dir = Path(ckpt_dir).absolute()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    trained = nnx.state(model, nnx.Any(nnx.LoRAParam, nnx.PathContains("value_head")))
    ocp.save(ckpt_dir / PARAMS_DIR, param_tree(trained), overwrite=True)
    if is_main_process():
        config = {
            "format": ADAPTER_FORMAT,
            "base_model": str(Path(base_model).absolute()),
            "lora": dict(lora),
            "model": model.cfg.to_params_json(),
            **provenance,
        }
        atomic_write_text(ckpt_dir / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def read_adapter_config(ckpt_dir: str | os.PathLike) -> dict:
    """``adapter_config.json`` of an adapter directory, its base checked. Raises CheckpointError naming the file
    when it is unreadable or its base model directory is gone."""
    path = Path(ckpt_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
        base, _ = Path(config["base_model"]), config["lora"]["rank"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: expected a JSON object with 'base_model' and 'lora' ({e})") from None
    if not (base / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{path}: base_model {base} is not an Orbax model directory (moved or deleted?); the adapters need it"
        )
    return config


def check_stored_shapes(params_dir: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Raises CheckpointError naming every missing, unexpected or mis-shaped weight."""
    try:
        stored = flatten(ocp.metadata(params_dir).metadata)
    except Exception as e:  # Orbax raises several types for a missing or foreign directory
        raise CheckpointError(f"{params_dir}: not an Orbax parameter checkpoint ({type(e).__name__}: {e})") from None
    problems = [f"missing weight {k} (expected shape {expected[k]})" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected weight {k} (shape {tuple(stored[k].shape)})" for k in sorted(set(stored) - set(expected))]
    problems += [
        f"weight {k}: checkpoint shape {tuple(stored[k].shape)}, model expects {expected[k]}"
        for k in sorted(set(stored) & set(expected))
        if tuple(stored[k].shape) != expected[k]
    ]
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
    target = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        param_tree(abstract_state),
        param_tree(shardings),
    )
    disk_target = to_disk_layout(flatten(target), _block_struct)
    check_stored_shapes(params_dir, {k: tuple(v.shape) for k, v in disk_target.items()})
    restored = flatten(ocp.load(params_dir, unflatten(disk_target)))
    nnx.replace_by_pure_dict(abstract_state, unflatten(from_disk_layout(restored, flatten(target))))
    return nnx.merge(graphdef, abstract_state)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(tree) -> list[tuple[tuple[str, ...], Any]]:
    return [(tuple(_key_name(k) for k in path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _without_kernel(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The name a parameter had before projections became modules: ``.../wq/kernel/value`` -> ``.../wq/value``."""
    return tuple(p for i, p in enumerate(parts) if not (p == "kernel" and i and parts[i - 1] in PROJECTIONS))


def restore_renamed(abstract, stored, restore):
    """Restores a pytree checkpoint into the structure of ``abstract`` (ShapeDtypeStructs with shardings).

    ``stored`` is the checkpoint's metadata tree and ``restore(target)`` the restore call. A checkpoint whose names
    match ``abstract`` is restored directly; one written before projections became modules (``wq/value`` where
    the model now has ``wq/kernel/value``) is restored into a target of its own structure and mapped back by name.
    Raises CheckpointError naming the leaves that match neither way.
    """
    new = _path_names(abstract)
    stored_names = {names for names, _ in _path_names(stored)}
    if {names for names, _ in new} == stored_names:
        return restore(abstract)
    by_old = {_without_kernel(names): leaf for names, leaf in new}
    if set(by_old) != stored_names:
        missing = sorted("/".join(n) for n in set(by_old) - stored_names)[:5]
        unexpected = sorted("/".join(n) for n in stored_names - set(by_old))[:5]
        raise CheckpointError(
            f"train-state checkpoint does not match the model: missing {missing}, unexpected {unexpected}"
        )
    target = jax.tree_util.tree_map_with_path(lambda path, _: by_old[tuple(_key_name(k) for k in path)], stored)
    restored = {names: leaf for names, leaf in _path_names(restore(target))}
    leaves = [restored[_without_kernel(names)] for names, _ in new]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)
