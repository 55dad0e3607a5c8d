"""The checks every job shares (run identity, distributed runtime, model, mesh), before the job's own.

Each job adds its sections' checks to the same ``ConfigChecker`` (``train.checks``, ``eval.checks``,
``study.runner.problems``; ``wmtp_jax.jobs`` calls them), so every problem is reported at once.
"""

from __future__ import annotations

import os

import jax

from wmtp_jax import sharding
from wmtp_jax.distributed import CLUSTERS
from wmtp_jax.model.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES
from wmtp_jax.schema import ConfigChecker

JOBS = ("train", "eval", "rollout", "forward", "study")  # what the run does; training configs also name an objective
GENERATION_JOBS = ("eval", "rollout")


def common_problems(c, n_devices: int | None = None) -> tuple[ConfigChecker, tuple]:
    """For the run config ``c`` (``run_config.RunConfig``): a ``ConfigChecker`` holding the problems of the keys
    every job shares, and the mesh's ``(data, fsdp)``
    sizes (``(None, None)`` when the mesh itself is invalid) for the job's own batch checks. ``n_devices``
    defaults to ``jax.device_count()``."""
    n_devices = jax.device_count() if n_devices is None else n_devices
    k = ConfigChecker(c)
    k.one_of("job", JOBS)
    k.one_of("distributed.cluster", tuple(CLUSTERS))
    k.check(
        "distributed.num_processes",
        lambda v: isinstance(v, int) and v >= 0,
        "0 (one process / from the environment) or the number of processes",
    )
    k.check(
        "distributed.process_id",
        lambda v: (
            isinstance(v, int) and v >= -1 and (c.distributed.num_processes == 0 or v < c.distributed.num_processes)
        ),
        "-1 (from the environment) or an id in [0, distributed.num_processes)",
    )
    k.check("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    k.one_of("model.dtype", sorted(DTYPES))
    k.one_of("model.param_dtype", sorted(DTYPES))
    k.one_of("model.remat", REMAT_POLICIES)
    k.check("model.scan_layers", lambda v: isinstance(v, bool), "true or false")
    k.one_of("model.attention", ATTENTION_IMPLS)
    k.positive("model.attention_chunk")
    k.check("model.vocab_size", lambda v: isinstance(v, int) and v >= 0, "0 (keep) or a positive integer")
    if c.job in GENERATION_JOBS:
        if not c.model.build_micro:
            k.check(
                "model.checkpoint",
                lambda v: bool(v) and os.path.exists(v),
                "an existing Orbax model directory, training workdir, workdir/checkpoints/STEP or torch "
                "checkpoint directory (set --config.model.checkpoint=PATH)",
            )
    elif not c.model.build_micro and not c.model.init_from:
        k.check(
            "model.checkpoint",
            lambda v: bool(v) and os.path.isdir(v),
            "an existing torch or Orbax checkpoint directory (set --config.model.checkpoint=PATH)",
        )
    if c.model.init_from:
        k.check(
            "model.init_from",
            lambda v: os.path.isfile(os.path.join(v, "model_config.json")),
            "an Orbax model directory with model_config.json (e.g. workdir/critic/final)",
        )
    if c.tokenizer:
        k.check("tokenizer", os.path.isfile, "an existing SentencePiece .model file")
    try:
        data, fsdp, _ = sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, n_devices)
    except sharding.MeshError as e:
        k.found.append(f"mesh=({c.mesh.data}, {c.mesh.fsdp}, {c.mesh.tensor}): {e}")
        data = fsdp = None
    return k, (data, fsdp)
