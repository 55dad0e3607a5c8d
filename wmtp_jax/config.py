"""Validation of a run config before anything is loaded or compiled: every problem is reported at once."""

from __future__ import annotations

import os

import jax
import ml_collections

from wmtp_jax import sharding
from wmtp_jax.model.config import _DTYPES, _REMAT_POLICIES

EXPERIMENTS = ("forward",)


class ConfigError(ValueError):
    """One or more invalid config values; ``problems`` lists them (key, value, what is allowed)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


def problems(c: ml_collections.ConfigDict, n_devices: int | None = None) -> list[str]:
    """Every problem in ``c``, one line each, naming the key, the value and what is allowed."""
    out = []

    def check(key, ok, expected):
        value = c
        for part in key.split("."):
            value = value[part]
        if not ok(value):
            out.append(f"{key}={value!r}: expected {expected}")

    check("experiment", lambda v: v in EXPERIMENTS, f"one of {list(EXPERIMENTS)}")
    check("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    check("model.dtype", lambda v: v in _DTYPES, f"one of {sorted(_DTYPES)}")
    check("model.param_dtype", lambda v: v in _DTYPES, f"one of {sorted(_DTYPES)}")
    check("model.remat", lambda v: v in _REMAT_POLICIES, f"one of {list(_REMAT_POLICIES)}")
    check("model.vocab_size", lambda v: isinstance(v, int) and v >= 0, "0 (keep) or a positive integer")
    if not c.model.build_micro:
        check("model.checkpoint", lambda v: bool(v) and os.path.isdir(v),
              "an existing torch or Orbax checkpoint directory (set --config.model.checkpoint=PATH)")
    if c.tokenizer:
        check("tokenizer", os.path.isfile, "an existing SentencePiece .model file")
    try:
        sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor,
                            jax.device_count() if n_devices is None else n_devices)
    except sharding.MeshError as e:
        out.append(f"mesh=({c.mesh.data}, {c.mesh.fsdp}, {c.mesh.tensor}): {e}")
    return out


def validate(c: ml_collections.ConfigDict, n_devices: int | None = None) -> None:
    found = problems(c, n_devices)
    if found:
        raise ConfigError(found)
