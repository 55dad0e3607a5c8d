"""The MTP transformer: ``ModelConfig`` and ``MTPTransformer`` (public API)."""

from wmtp_jax.model.config import ModelConfig, ModelConfigError
from wmtp_jax.model.mtp import MTPOutput, MTPTransformer, create_model

__all__ = ["ModelConfig", "ModelConfigError", "MTPOutput", "MTPTransformer", "create_model"]
