"""LoRA adapters on the model's projection modules, built from Flax's ``nnx.LoRA``.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, eq. 3) keeps a
projection's kernel ``W [in, out]`` frozen and learns ``A [in, r]`` and ``B [r, out]``:

    y = x W + (alpha / r) * x A B

``B`` starts at zero, so an adapted model computes exactly what its base computes until the first update. ``A``
is He-uniform (``nnx.LoRA``'s default). Adapters of the stacked blocks (``layers``, ``heads``) are stacked the same
way, with a leading ``layers`` axis (``nnx.vmap`` over ``nnx.LoRA``'s constructor, as ``mtp.stacked_blocks`` does
for the blocks). So they are scanned, sliced and sharded with their block: ``A`` is sharded like the kernel's input
axis and ``B`` like its output axis, and the rank axis is replicated. Adapter parameters are ``nnx.LoRAParam``
(a ``Param``), which lets the trainer give gradients and optimizer state to them alone (``trainable_filter``).

Why ``nnx.LoRA`` rather than ``qwix``: the projections are already ``nnx.Linear`` modules and the blocks are
built by ``nnx.vmap``, so an ``nnx.LoRA`` per projection stacks, scans and takes the logical sharding rules
with no interception of the forward pass. ``qwix`` rewrites ``dot_general`` calls at trace time, which would
also touch the output projection and the chunked loss. (Quantised frozen bases, QLoRA, are not implemented.)
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.model.config import DTYPES
from wmtp_jax.model.layers import Linear
from wmtp_jax.schema import Section

DEFAULT_TARGETS = ("attention/w[qkvo]", "feed_forward/w[123]")  # the seven block projections
_BLOCK_PROJECTION = re.compile(r"^(layers|heads)/(attention/w[qkvo]|feed_forward/w[123])$")
BASE_DTYPES = ("", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoraConfig(Section):
    """``model.lora``: ``rank`` (0 = full fine-tuning), ``alpha`` (the update is scaled by alpha / rank),
    ``targets`` (regexes searched in projection paths such as ``layers/attention/wq``; only the seven block
    projections can be adapted) and ``base_dtype`` (storage dtype of the frozen base weights: "" keeps
    ``model.param_dtype``, "bfloat16" halves their memory)."""

    rank: int = 0
    alpha: float = 32.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base_dtype: str = ""

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def problems(self, prefix: str) -> list[str]:
        k = self.checker(prefix)
        k.non_negative("rank")
        k.check("alpha", lambda v: isinstance(v, int | float) and v > 0, "a positive number")
        k.one_of("base_dtype", BASE_DTYPES)
        for t in self.targets:
            try:
                re.compile(t)
            except (re.error, TypeError) as e:
                k.found.append(f"{prefix}.targets: {t!r} is not a regular expression ({e})")
        return k.found


def projections(model: nnx.Module) -> dict[str, Linear]:
    """``{"layers/attention/wq": module, ...}``: every projection module of ``model`` by path."""
    return {"/".join(str(p) for p in path): m for path, m in nnx.iter_modules(model) if isinstance(m, Linear)}


def targeted(model: nnx.Module, cfg: LoraConfig) -> dict[str, Linear]:
    """The projections ``cfg.targets`` select. Raises ValueError if a target selects nothing or selects a
    projection that is not one of the seven block projections (the output and the value head stay as they are)."""
    found = {}
    for pattern in cfg.targets:
        hits = {p: m for p, m in projections(model).items() if re.search(pattern, p)}
        bad = sorted(p for p in hits if not _BLOCK_PROJECTION.match(p))
        if not hits or bad:
            raise ValueError(
                f"model.lora.targets: {pattern!r} "
                + (f"selects {bad}" if bad else "selects no projection")
                + "; expected regexes over the block projections, e.g. 'attention/w[qkvo]', 'feed_forward/w[123]'"
            )
        found.update(hits)
    return dict(sorted(found.items()))


def _adapter(module: Linear, rank: int, rngs: nnx.Rngs) -> nnx.LoRA:
    kernel = module.kernel
    axes = kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
    stacked = kernel.ndim == 3
    in_axis, out_axis = axes[-2], axes[-1]
    n_in, n_out = kernel.shape[-2:]

    def make(rngs: nnx.Rngs) -> nnx.LoRA:
        init_a = nnx.with_partitioning(nnx.initializers.he_uniform(), (in_axis, None), eager_sharding=False)
        init_b = nnx.with_partitioning(nnx.initializers.zeros, (None, out_axis), eager_sharding=False)
        return nnx.LoRA(
            n_in,
            rank,
            n_out,
            dtype=module.dtype,
            param_dtype=module.param_dtype,
            a_initializer=init_a,
            b_initializer=init_b,
            rngs=rngs,
        )

    if not stacked:
        return make(rngs)
    vmapped = nnx.vmap(make, in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    return nnx.split_rngs(splits=kernel.shape[0])(vmapped)(rngs)


def apply_lora(model: nnx.Module, cfg: LoraConfig, mesh: jax.sharding.Mesh | None = None, seed: int = 0):
    """Adds an ``nnx.LoRA`` adapter (``B = 0``) to every projection ``cfg.targets`` selects, in place, placed in
    its shardings over ``mesh`` (default: where the model is), and casts the frozen base weights to
    ``cfg.base_dtype``. Returns ``model``. Raises ValueError for a bad target or a model that already has
    adapters."""
    from wmtp_jax import sharding

    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    rngs = nnx.Rngs(seed)
    for module in targeted(model, cfg).values():
        module.lora = _adapter(module, cfg.rank, rngs)
        module.lora_scale = cfg.scale
    if cfg.base_dtype:
        dtype = DTYPES[cfg.base_dtype]
        frozen = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam), nnx.Not(nnx.PathContains("value_head")))
        nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), nnx.state(model, frozen)))
    if mesh is not None:
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, sharding.state_shardings(state, mesh)))
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(m.lora is not None for m in projections(model).values())


def trainable_filter(base):
    """``base`` (an objective's nnx filter) restricted to the adapters and the value head: with LoRA only those
    get gradients and optimizer state; the base weights are frozen."""
    return nnx.All(base, nnx.Any(nnx.LoRAParam, nnx.PathContains("value_head")))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel, ``W + (alpha / r) A B`` (computed in float32, stored in the
    kernel's dtype), and removes the adapters, in place. Returns ``model``: a plain model that
    ``save_model`` / ``load_model`` handle as any other."""
    for module in projections(model).values():
        if module.lora is None:
            continue
        a = module.lora.lora_a[...].astype(jnp.float32)
        b = module.lora.lora_b[...].astype(jnp.float32)
        kernel = module.kernel[...]
        delta = jnp.einsum("...ir,...ro->...io", a, b) * module.lora_scale
        module.kernel[...] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
        del module.lora
        del module.lora_scale
    return model
