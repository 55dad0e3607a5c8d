"""``--config.dry_run=True``: validate, resolve the model shapes, compile the step on the real mesh from abstract
shapes, print per-device memory and FLOPs per token, and exit — no weights are read or allocated.

A 7B user learns in a minute whether a config fits before the GPU bill starts. The figure is XLA's compiled
buffer assignment for the devices at hand (``Compiled.memory_analysis``): on a GPU that is the GPU's, on
XLA:CPU an estimate (see the README's memory table).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.checkpoint.convert import peek_config
from wmtp_jax.checkpoint.micro import write_micro_models
from wmtp_jax.checkpoint.store import abstract_model
from wmtp_jax.model import ModelConfig, MTPTransformer
from wmtp_jax.model.config import layout_options, model_options
from wmtp_jax.model.lora import LoraConfig, apply_lora, quantize_base
from wmtp_jax.train.loop import batch_rows, make_trainer
from wmtp_jax.train.objectives import second_model, second_model_dtypes, trained_model
from wmtp_jax.train.step import BATCH_KEYS

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MemoryFigures:
    """Per-device bytes of a compiled step: ``arguments`` (params, optimizer state, batch), ``outputs``,
    ``aliased`` (donated outputs that reuse argument buffers, counted once), ``temporaries``; ``total`` =
    arguments + outputs - aliased + temporaries."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @classmethod
    def of(cls, compiled) -> MemoryFigures:
        stats = compiled.memory_analysis()
        return cls(
            stats.argument_size_in_bytes,
            stats.output_size_in_bytes,
            stats.alias_size_in_bytes,
            stats.temp_size_in_bytes,
        )

    def describe(self) -> str:
        return (
            f"arguments {self.arguments / GIB:.2f} GiB, outputs {self.outputs / GIB:.2f} GiB, aliased (donated) "
            f"{self.aliased / GIB:.2f} GiB, temporaries {self.temporaries / GIB:.2f} GiB; "
            f"per-device total {self.total / GIB:.2f} GiB"
        )


def sharded_abstract_model(cfg: ModelConfig, mesh, lora: LoraConfig | None = None, quantize: str = ""):
    """``MTPTransformer(cfg)`` (with ``lora`` adapters when enabled; a frozen model with its block projections
    quantised to ``quantize``, "nf4" or "int8") whose parameters are ShapeDtypeStructs carrying their shardings
    over ``mesh``."""
    if lora is not None and lora.enabled:
        graphdef, state = nnx.split(
            nnx.eval_shape(lambda: apply_lora(MTPTransformer(cfg, rngs=nnx.Rngs(0)), lora, seed=0))
        )
    elif quantize:
        graphdef, state = nnx.split(
            nnx.eval_shape(lambda: quantize_base(MTPTransformer(cfg, rngs=nnx.Rngs(0)), quantize))
        )
    else:
        graphdef, state = abstract_model(cfg)
    shardings = sharding.state_shardings(state, mesh)
    state = jax.tree.map(
        lambda v, s: v.replace(value=jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.merge(graphdef, state)


def abstract_batch(rows: int, length: int, mesh, tables=()) -> dict[str, jax.ShapeDtypeStruct]:
    """A training batch of ``rows`` x ``length`` tokens as ShapeDtypeStructs split over the batch axes, with a
    float32 entry per precomputed table key in ``tables`` (``Objective.tables``)."""
    spec = sharding.batch_sharding(mesh)
    floats = ("rewards", *tables)
    return {
        k: jax.ShapeDtypeStruct((rows, length), jnp.float32 if k in floats else jnp.int32, sharding=spec)
        for k in (*BATCH_KEYS, *tables)
    }


def dry_run(c) -> dict:
    """Compiles the configured step on abstract shapes; prints and returns the figures."""

    if c.model.build_micro:  # the micro stand-ins are tiny files; their shapes are what is compiled
        write_micro_models(Path(c.model.checkpoint).parent)
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    vocab = c.model.vocab_size or None
    policy_cfg = peek_config(c.model.init_from or trained_model(c), vocab).replace(**model_options(c.model))
    reference = None
    second, _ = second_model(c)
    if second:
        dtype, param_dtype, quantize = second_model_dtypes(c)
        ref_cfg = peek_config(second, vocab).replace(dtype=dtype, param_dtype=param_dtype, **layout_options(c.model))
        reference = sharded_abstract_model(ref_cfg, mesh, quantize=quantize)
    lora = c.model.lora
    trainer = make_trainer(c, sharded_abstract_model(policy_cfg, mesh, lora), reference, mesh)
    length = max(c.data.buckets)
    rows = batch_rows(c)
    figures = MemoryFigures.of(trainer.compile(abstract_batch(rows, length, mesh, trainer.objective.tables)))
    n_devices = jax.device_count()
    print(
        f"dry run: {c.objective} step of a {policy_cfg.n_layers}-layer, d={policy_cfg.dim} model "
        f"({policy_cfg.n_future_tokens} heads{', + reference' if reference is not None else ''}), mesh "
        f"{dict(mesh.shape)} on {n_devices} {jax.devices()[0].platform} device(s), global batch "
        f"{rows} x {length} tokens, {c.train.grad_accum_steps} micro-batch(es)"
    )
    print(f"  {figures.describe()}")
    print(f"  {trainer.flops_per_token / 1e9:.3g} GFLOP per token (6N rule, attention scores left out)")
    return {
        "memory": dataclasses.asdict(figures),
        "total_bytes": figures.total,
        "flops_per_token": trainer.flops_per_token,
    }
