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

Dropout on the adapter's input (``model.lora.dropout``, as in the LoRA paper's GPT-2 experiments and PEFT's
``lora_dropout``) is active only when the forward pass gets a ``dropout_key`` (the train step); evaluation and
``merge_lora`` never see it.

QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314, section 3):
with ``base_dtype`` "nf4" or "int8" the frozen kernels of all seven block projections are stored as 4-bit
NormalFloat or int8 codes with one absmax scale per block of ``QUANT_BLOCK`` input rows per output column, and
dequantised to the compute dtype one block (layer) at a time inside the scan; the other frozen weights
(embedding, output, norms) are stored in bfloat16. The quantisation numerics (the NF4 code book, tiled absmax
scales) are ``qwix``'s (``qwix.quantize`` / ``qwix.dequantize``); QLoRA's double quantisation of the scales is
not applied (float32 scales cost 0.5 bit per weight at block 64).

Why ``nnx.LoRA`` (and only ``qwix``'s quantised arrays) rather than ``qwix``'s LoRA / QLoRA providers: the
projections are already ``nnx.Linear`` modules and the blocks are built by ``nnx.vmap``, so an ``nnx.LoRA`` per
projection stacks, scans and takes the logical sharding rules with no interception of the forward pass. The
providers rewrite ``dot_general`` calls at trace time, which would also touch the output projection and the
chunked loss, and re-quantise weights on every call instead of storing them quantised.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.model.config import DTYPES
from wmtp_jax.model.layers import Linear
from wmtp_jax.model.quant import QUANTIZED, QuantizedWeight, dequantize, quantize_kernel
from wmtp_jax.schema import Section

DEFAULT_TARGETS = ("attention/w[qkvo]", "feed_forward/w[123]")  # the seven block projections
_BLOCK_PROJECTION = re.compile(r"^(layers|heads)/(attention/w[qkvo]|feed_forward/w[123])$")
BASE_DTYPES = ("", "float32", "bfloat16", "nf4", "int8")


@dataclasses.dataclass(frozen=True)
class LoraConfig(Section):
    """``model.lora``: ``rank`` (0 = full fine-tuning), ``alpha`` (the update is scaled by alpha / rank),
    ``dropout`` (rate on each adapter's input while training), ``targets`` (regexes searched in projection paths
    such as ``layers/attention/wq``; only the seven block projections can be adapted) and ``base_dtype`` (storage
    of the frozen base weights: "" keeps ``model.param_dtype``, "bfloat16" halves their memory, "nf4" / "int8"
    quantise the block projections (QLoRA) and store the rest in bfloat16)."""

    rank: int = 0
    alpha: float = 32.0
    dropout: float = 0.0
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
        k.check("dropout", lambda v: isinstance(v, int | float) and 0 <= v < 1, "a rate in [0, 1)")
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
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters")
    rngs = nnx.Rngs(seed)
    for module in targeted(model, cfg).values():
        module.lora = _adapter(module, cfg.rank, rngs)
        module.lora_scale = cfg.scale
        module.lora_dropout = float(cfg.dropout)
    if cfg.base_dtype in QUANTIZED:
        quantize_base(model, cfg.base_dtype)
    if cfg.base_dtype:
        dtype = DTYPES.get(cfg.base_dtype, jnp.bfloat16)
        frozen = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam), nnx.Not(nnx.PathContains("value_head")))
        nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), nnx.state(model, frozen)))
    if mesh is not None:
        sharding.place(model, mesh)
    return model


def _block_axes(module: Linear) -> tuple:
    kernel = module.kernel
    return kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim


def quantize_base(model: nnx.Module, base_dtype: str, mesh: jax.sharding.Mesh | None = None) -> nnx.Module:
    """Stores the kernel of every block projection of ``model`` (all seven, adapted or not) as ``base_dtype``
    ("nf4" or "int8") codes with one float32 absmax scale per ``QUANT_BLOCK`` input rows and output column
    (``qwix.quantize``; one scale per column when the input width is not a multiple of the block), in place.
    ``kernel`` then holds the codes (same shape and logical axes) and ``kernel_scale`` the scales ``[..., in /
    block, out]`` (the block axis replicated), placed in their shardings over ``mesh`` when given. Also used for a
    frozen second model (``reference.dtype`` / ``critic.dtype`` "nf4" or "int8"). Returns ``model``."""
    if base_dtype not in QUANTIZED:
        raise ValueError(f"base_dtype={base_dtype!r}: expected one of {list(QUANTIZED)}")
    for path, module in projections(model).items():
        if not _BLOCK_PROJECTION.match(path) or module.quantized:
            continue
        axes = _block_axes(module)
        q = quantize_kernel(module.kernel[...], base_dtype)
        module.kernel = QuantizedWeight(q.qvalue, out_sharding=axes, eager_sharding=False)
        module.kernel_scale = QuantizedWeight(q.scale, out_sharding=(*axes[:-2], None, axes[-1]), eager_sharding=False)
        module.quantized = True
        module.qtype = base_dtype
    if mesh is not None:
        sharding.place(model, mesh)
    return model


def has_lora(model: nnx.Module) -> bool:
    return any(m.lora is not None for m in projections(model).values())


def trainable_filter(base):
    """``base`` (an objective's nnx filter) restricted to the adapters and the value head: with LoRA only those
    get gradients and optimizer state; the base weights are frozen."""
    return nnx.All(base, nnx.Any(nnx.LoRAParam, nnx.PathContains("value_head")))


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel, ``W + (alpha / r) A B`` (computed in float32, stored in the
    kernel's dtype; a quantised QLoRA kernel is dequantised and stored in ``model.cfg.param_dtype``), and removes
    the adapters and the quantisation, in place. Returns ``model``: a plain model that ``save_model`` /
    ``load_model`` handle as any other."""
    for module in projections(model).values():
        if module.lora is None and not module.quantized:
            continue
        stored = module.kernel[...]
        sharding = getattr(stored, "sharding", None)
        if module.quantized:
            w, dtype = dequantize(module, jnp.float32), model.cfg.weight_dtype
        else:
            w, dtype = stored.astype(jnp.float32), stored.dtype
        if module.lora is not None:
            a = module.lora.lora_a[...].astype(jnp.float32)
            b = module.lora.lora_b[...].astype(jnp.float32)
            w = w + jnp.einsum("...ir,...ro->...io", a, b) * module.lora_scale
            del module.lora
            del module.lora_scale
            module.lora_dropout = 0.0
        w = w.astype(dtype) if sharding is None else jax.device_put(w.astype(dtype), sharding)
        if module.quantized:
            module.kernel = nnx.Param(w, out_sharding=_block_axes(module), eager_sharding=False)
            del module.kernel_scale
            del module.qtype
            module.quantized = False
        else:
            module.kernel[...] = w
    return model
