"""Restore a policy for evaluation / rollouts from whatever a user points at, parameters only, into any mesh.

Accepted ``path``:
  * an Orbax model directory (``model_config.json`` + ``params/``): a conversion, or a run's ``final/``;
  * a run's ``final/`` written as LoRA adapters plus a base reference (``export.merge_lora=False``: ``params/`` +
    ``adapter_config.json``): the base is restored and the adapters run unmerged, as in training;
  * a training workdir (its latest checkpoint) or one of its ``checkpoints/<step>`` directories: the
    trained parameters are read from the step's train state (optimizer state is never read), the rest
    (e.g. the frozen value head) from the run's starting model named in the workdir's ``config.json``;
  * a Meta / Hugging Face torch checkpoint directory (converted once into ``cache_dir``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx
from jax.sharding import Mesh

from wmtp_jax.checkpoint.convert import ensure_orbax
from wmtp_jax.checkpoint.store import (
    PARAMS_DIR,
    CheckpointError,
    flatten,
    load_model,
    model_name,
    param_tree,
    partial_load,
    read_adapter_config,
    unflatten,
)
from wmtp_jax.checkpoint.train_state import resolve, run_lora_config, starting_model
from wmtp_jax.model.lora import LoraConfig, apply_lora
from wmtp_jax.model.mtp import with_mlp_value_head


def _model_mesh(model: nnx.Module):
    """The mesh ``model``'s parameters are sharded over."""
    return jax.tree.leaves(nnx.state(model))[0].sharding.mesh


def convert_if_torch(path: str | Path, cache_dir: str | Path) -> None:
    """Converts ``path`` into ``cache_dir`` (once) if it is a torch checkpoint; anything else is left alone."""
    path = Path(path)
    if path.is_dir() and resolve(path).kind == "torch":
        ensure_orbax(path, cache_dir)


def load_policy(
    path: str | Path, mesh: Mesh | None = None, *, cache_dir: str | Path = "artifacts/converted", **config_overrides
) -> tuple[nnx.Module, str]:
    """``(model, description)``: the model at ``path`` (see the module docstring) restored into ``mesh``.

    ``config_overrides``: shape-free ``ModelConfig`` fields (dtype, param_dtype, remat).
    Raises:
      CheckpointError: nothing usable at ``path`` (missing directory, unknown layout, mismatched weights).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    found = resolve(path)
    if found.kind == "model":
        return load_model(path, mesh, **config_overrides), f"orbax model {path}"
    if found.kind == "adapters":
        return _load_adapters(path, mesh, config_overrides)
    if found.kind == "torch":
        model_dir = ensure_orbax(path, cache_dir)
        return load_model(model_dir, mesh, **config_overrides), f"torch checkpoint {path} (converted: {model_dir})"
    workdir, step_dir = found.workdir, found.step_dir
    base = starting_model(workdir)
    model = load_model(base, mesh, **config_overrides)
    lora = run_lora_config(workdir)
    if lora.enabled:  # the train state holds the adapters; they run unmerged
        apply_lora(model, lora, _model_mesh(model))
    stored = ocp.checkpointables_metadata(step_dir).metadata["state"].get("params")
    if stored is None:
        raise CheckpointError(f"{step_dir}/state: no 'params' in this train state")

    def restore(target):
        with partial_load():  # only the parameters: the optimizer state is never read
            return ocp.load_checkpointables(step_dir, {"state": {"params": target}})["state"]["params"]

    _restore_trained(model, stored, restore, f"{step_dir} (base {base})")
    return model, f"training checkpoint {step_dir} (step {step_dir.name}; base {base})"


def _load_adapters(path: Path, mesh: Mesh | None, config_overrides: dict) -> tuple[nnx.Module, str]:
    """``(model, description)``: the base model an adapter directory (``save_adapters``) names, with its adapters
    (and value head) on top."""
    config = read_adapter_config(path)
    base = Path(config["base_model"])
    model = load_model(base, mesh, **config_overrides)
    hidden = config["model"].get("value_head_hidden", 0)
    if hidden and model.cfg.value_head_hidden != hidden:  # a critic's MLP head
        with_mlp_value_head(model, hidden, _model_mesh(model), dropout=config["model"].get("value_head_dropout", 0.0))
    apply_lora(model, LoraConfig.from_config(config["lora"]), _model_mesh(model))
    params_dir = path.absolute() / PARAMS_DIR
    _restore_trained(model, ocp.metadata(params_dir).metadata, lambda target: ocp.load(params_dir, target), str(path))
    return model, f"LoRA adapters {path} (base {base})"


def _restore_trained(model: nnx.Module, stored, restore, where: str) -> None:
    """Replaces the parameters of ``model`` named in ``stored`` (a checkpoint's metadata tree: train-state names
    ending in ``/value``, or pure names) by ``restore(target)`` of them, in place, in the model's shardings."""
    state = nnx.state(model)
    current = flatten(param_tree(state))
    # stored name -> model name (train states written before projections became modules lack "/kernel")
    names = {name: model_name(name.removesuffix("/value")) for name in flatten(stored)}
    unknown = sorted(n for n, m in names.items() if m not in current)
    if unknown:
        raise CheckpointError(f"{where}: weights not in the model: {unknown[:5]}")
    target = unflatten(
        {
            n: jax.ShapeDtypeStruct(current[m].shape, current[m].dtype, sharding=current[m].sharding)
            for n, m in names.items()
        }
    )
    merged = dict(current)
    merged.update({names[k]: v for k, v in flatten(restore(target)).items()})
    nnx.replace_by_pure_dict(state, unflatten(merged))
    nnx.update(model, state)
