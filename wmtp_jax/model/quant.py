"""Quantisation primitives of frozen base weights (QLoRA's storage), below the layers that dequantise them.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314, section 3) stores a frozen kernel ``[..., in, out]`` as 4-bit
NormalFloat (or int8) codes with one absmax scale per block of ``QUANT_BLOCK`` input rows per output column. The
numerics (NF4 code book, tiled absmax scales) are ``qwix``'s; ``wmtp_jax.model.lora`` applies them to a model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from wmtp_jax.model.config import DTYPES

QUANTIZED = {"nf4": "nf4", "int8": jnp.int8}  # base_dtype -> qwix qtype (QLoRA)
QUANT_BLOCK = 64  # input rows per absmax scale (QLoRA's block size)


class QuantizedWeight(nnx.Variable):
    """A frozen, quantised base weight (QLoRA): a kernel's codes (``uint4`` for nf4, ``int8``) or its absmax
    scales. Not an ``nnx.Param``: it never gets gradients or optimizer state."""


@functools.partial(jax.jit, static_argnames="base_dtype")
def quantize_kernel(kernel: jax.Array, base_dtype: str) -> qwix.QArray:
    """``qwix.quantize`` of a kernel ``[..., in, out]``: one float32 absmax scale per ``QUANT_BLOCK`` input rows
    (all of them when the input width is not a multiple of it) and output column (and layer). Jitted: one compiled
    program per kernel shape instead of one small program per array operation of the quantiser."""
    n_in = kernel.shape[-2]
    return qwix.quantize(
        kernel,
        QUANTIZED[base_dtype],
        channelwise_axes=tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2),
        tiled_axes={kernel.ndim - 2: QUANT_BLOCK if n_in % QUANT_BLOCK == 0 else n_in},
        scale_dtype=jnp.float32,
    )


def dequantize(module, dtype) -> jax.Array:
    """The kernel ``[..., in, out]`` of a quantised projection (a ``layers.Linear`` with ``kernel`` codes,
    ``kernel_scale`` and ``qtype``), dequantised (``qwix.dequantize``) and cast to ``dtype``."""
    q = qwix.QArray(module.kernel[...], module.kernel_scale[...], None, QUANTIZED[module.qtype])
    return qwix.dequantize(q).astype(dtype)


def frozen_kernel(kernel, base_dtype: str) -> jax.Array:
    """The float32 kernel ``[..., in, out]`` an adapter trained against for a stored base ``kernel``: as stored
    (``base_dtype`` ""), rounded to bfloat16 / float32, or quantised and dequantised ("nf4", "int8") exactly as
    ``quantize_base`` stores it (its scales are per block and column, so one layer quantises as its stack does)."""
    kernel = jnp.asarray(kernel)
    if base_dtype in QUANTIZED:
        return _quantize_round_trip(kernel, base_dtype)
    if base_dtype:
        kernel = kernel.astype(DTYPES[base_dtype])
    return kernel.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames="base_dtype")
def _quantize_round_trip(kernel: jax.Array, base_dtype: str) -> jax.Array:
    return qwix.dequantize(quantize_kernel(kernel, base_dtype))
