"""torch -> Orbax conversion and sharded restore (public API: ``convert_torch_checkpoint``, ``load_model``)."""

from wmtp_jax.checkpoint.convert import convert_torch_checkpoint, ensure_orbax
from wmtp_jax.checkpoint.store import CheckpointError, load_model, read_config, save_model

__all__ = ["CheckpointError", "convert_torch_checkpoint", "ensure_orbax", "load_model", "read_config", "save_model"]
