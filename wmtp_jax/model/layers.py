"""LLaMA building blocks in Flax NNX: RMSNorm, interleaved RoPE, grouped-query attention, SwiGLU.

Written from Meta's ``llama/model.py`` in facebook/multi-token-prediction (the reference for every
formula below). Every projection (wq, wk, wv, wo, w1, w2, w3, and the model's output and value head) is its
own ``nnx.Linear`` module with a ``kernel`` stored ``[in, out]`` (torch ``Linear.weight`` transposed), so an
adapter (LoRA) or another head can wrap or replace it. Every parameter carries logical axis names
(``nnx.with_partitioning``); ``wmtp_jax.sharding`` maps them to mesh axes.

Logical axes used by parameters:
  "vocab"    vocabulary rows of the embedding / columns of the output projection
  "embed"    the model width d
  "q_heads"  flattened query heads (n_heads * head_dim)
  "kv_heads" flattened key/value heads (n_kv_heads * head_dim)
  "mlp"      the SwiGLU hidden width
  "norm"     RMSNorm scales (never sharded)
  "layers"   the leading axis of stacked blocks (``mtp.stacked_blocks``; never sharded)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.model.config import ModelConfig
from wmtp_jax.model.quant import dequantize

_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape, axes, dtype, init=None) -> nnx.Param:
    init = init or nnx.initializers.normal(_INIT_STD)
    return nnx.Param(nnx.with_partitioning(init, axes, eager_sharding=False)(rngs.params(), shape, dtype))


class Linear(nnx.Linear):
    """``nnx.Linear`` (kernel ``[in, out]``). Indexing reads the kernel (``proj[...]``), as when projections were
    bare parameters; ``proj["kernel"]`` / ``proj["bias"]`` return the parameter itself.

    ``lora``: an optional ``nnx.LoRA`` adapter (``wmtp_jax.model.lora``) added to the output, scaled by
    ``lora_scale`` (alpha / rank), whose input goes through dropout of rate ``lora_dropout`` when a
    ``dropout_key`` is given (training). ``quantized``: the frozen kernel is stored quantised (QLoRA,
    ``lora.quantize_base``) and dequantised to the compute dtype when the projection runs."""

    lora: nnx.LoRA | None = None
    lora_scale: float = 1.0
    lora_dropout: float = 0.0
    quantized: bool = False

    def __getitem__(self, index):
        return getattr(self, index) if isinstance(index, str) else self.weight()[index]

    def weight(self) -> jax.Array:
        """The kernel ``[in, out]`` (dequantised from its stored ``nf4`` / ``int8`` codes for a QLoRA base)."""
        if not self.quantized:
            return self.kernel[...]
        return dequantize(self, self.dtype or jnp.float32)

    def __call__(self, inputs: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        if self.quantized:
            dt = self.dtype or jnp.float32
            y = jnp.einsum(
                "...i,io->...o", inputs.astype(dt), self.weight(), preferred_element_type=self.preferred_element_type
            )
        else:
            y = super().__call__(inputs)
        if self.lora is None:
            return y
        x = nnx.Dropout(self.lora_dropout)(inputs, deterministic=dropout_key is None, rngs=dropout_key)
        return y + (self.lora_scale * self.lora(x)).astype(y.dtype)


def dropout_keys(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys from ``key`` (``jax.random.fold_in`` of 0 .. n-1), or ``n`` Nones without a key
    (evaluation: no dropout)."""
    return [None if key is None else jax.random.fold_in(key, i) for i in range(n)]


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
    use_bias: bool = False,
    init=None,
    out_dtype=None,
) -> Linear:
    """A projection ``y = x @ kernel (+ bias)``: ``kernel`` ``[in_features, out_features]`` with logical axes
    ``axes``, computed in ``dtype`` (inputs and kernel are cast to it), output in ``out_dtype`` (default
    ``dtype``). Initialised N(0, 0.02) unless ``init`` is given; the bias (if any) starts at zero."""

    def partitioned(fn, names):
        return nnx.with_partitioning(fn, names, eager_sharding=False)

    return Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(init or nnx.initializers.normal(_INIT_STD), axes),
        bias_init=partitioned(nnx.initializers.zeros, (axes[1],)),
        preferred_element_type=out_dtype,
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 and cast back (Meta ``RMSNorm``)."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = _param(rngs, (dim,), ("norm",), param_dtype, nnx.initializers.ones)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.weight[...].astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding on interleaved pairs (dims 2i, 2i+1), as Meta's ``apply_rotary_emb``.

    Args:
      x: ``[B, S, N, head_dim]`` queries or keys.
      positions: int ``[B, S]`` absolute positions (restart per packed segment, skip left padding).
      theta: RoPE base.
    Returns:
      ``x`` rotated by ``positions * theta^(-2i/head_dim)``, same shape and dtype.
    """
    head_dim = x.shape[-1]
    freqs = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, S, head_dim/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], head_dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: str = "xla", chunk: int = 512
) -> jax.Array:
    """Softmax attention ``softmax(q k^T / sqrt(head_dim) + mask) v`` (Vaswani et al. 2017, eq. 1) with GQA.

    Args:
      q: ``[B, S, n_heads, head_dim]``; k, v: ``[B, S, kv_heads, head_dim]``.
      mask: bool ``[B, 1, S, S]`` (True = may attend) or None for plain causal attention.
      impl: "xla" (one ``jax.nn.dot_product_attention``: ``[B, n_heads, S, S]`` float32 scores), "chunked"
        (the same exact softmax for ``chunk`` queries at a time under ``jax.checkpoint``: scores of one chunk
        live at once, in the forward and the backward pass) or "cudnn" (fused flash attention on NVIDIA GPUs).
    Returns:
      ``[B, S, n_heads, head_dim]``.
    """
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None, implementation="cudnn")
    b, s = q.shape[:2]
    if impl == "xla" or s <= chunk or s % chunk:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None)
    n = s // chunk
    if mask is None:
        mask = jnp.tril(jnp.ones((s, s), dtype=bool))[None, None]
    mask = jnp.broadcast_to(mask, (b, 1, s, s))
    q_chunks = q.reshape(b, n, chunk, *q.shape[2:]).swapaxes(0, 1)  # [n, B, chunk, N, h]
    m_chunks = mask.reshape(b, 1, n, chunk, s).transpose(2, 0, 1, 3, 4)  # [n, B, 1, chunk, S]

    @jax.checkpoint
    def one(args):
        qi, mi = args
        return jax.nn.dot_product_attention(qi, k, v, mask=mi)

    out = jax.lax.map(one, (q_chunks, m_chunks))  # [n, B, chunk, N, h]
    return out.swapaxes(0, 1).reshape(q.shape)


class KVCache(NamedTuple):
    """One attention layer's keys and values, ``[B, T, kv_heads, head_dim]`` each (T cache slots)."""

    k: jax.Array
    v: jax.Array


class Attention(nnx.Module):
    """Causal grouped-query self-attention (Meta ``Attention``) with RoPE and a padding/segment mask."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, q, kv = cfg.dim, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        opts = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.wq = linear(d, q, ("embed", "q_heads"), **opts)
        self.wk = linear(d, kv, ("embed", "kv_heads"), **opts)
        self.wv = linear(d, kv, ("embed", "kv_heads"), **opts)
        self.wo = linear(q, d, ("q_heads", "embed"), **opts)

    def _qkv(
        self, x: jax.Array, positions: jax.Array, keys=(None, None, None)
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Rotated queries ``[B, S, n_heads, head_dim]``, rotated keys and values ``[B, S, kv_heads, head_dim]``."""
        cfg = self.cfg
        b, s, _ = x.shape
        q = self.wq(x, dropout_key=keys[0]).reshape(b, s, cfg.n_heads, cfg.head_dim)
        k = self.wk(x, dropout_key=keys[1]).reshape(b, s, cfg.kv_heads, cfg.head_dim)
        v = self.wv(x, dropout_key=keys[2]).reshape(b, s, cfg.kv_heads, cfg.head_dim)
        return apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta), v

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array | None, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """x ``[B, S, d]``; positions int ``[B, S]``; mask bool ``[B, 1, S, S]`` or None (plain causal);
        ``dropout_key``: the adapters' dropout (training), None = none."""
        keys = dropout_keys(dropout_key, 4)
        q, k, v = self._qkv(x, positions, keys[:3])
        out = attention(q, k, v, mask, self.cfg.attention, self.cfg.attention_chunk)
        return self.wo(out.reshape(*x.shape[:2], -1), dropout_key=keys[3])

    def extend(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache, fill: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """Attention of ``m`` new tokens over a key/value cache (generation: prefill and decode).

        Args:
          x: ``[B, m, d]`` the new tokens' inputs; positions: int ``[B, m]`` their RoPE positions.
          mask: bool ``[B, 1, m, T]``: which cache slots each new token sees (including the new ones).
          cache: keys / values ``[B, T, kv_heads, head_dim]``; fill: int ``[B]`` slot of each row's first
            new token (the new keys / values are written at ``fill .. fill + m - 1``).
        Returns:
          (``[B, m, d]`` outputs, the updated cache).
        """
        dt = self.cfg.compute_dtype
        q, k, v = self._qkv(x, positions)
        write = jax.vmap(lambda c, new, i: jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (i, 0, 0)))
        cache = KVCache(write(cache.k, k, fill), write(cache.v, v, fill))
        out = jax.nn.dot_product_attention(q, cache.k.astype(dt), cache.v.astype(dt), mask=mask)
        return self.wo(out.reshape(*x.shape[:2], -1)), cache


class FeedForward(nnx.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` (Meta ``FeedForward``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h = cfg.dim, cfg.hidden_dim
        opts = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.w1 = linear(d, h, ("embed", "mlp"), **opts)
        self.w3 = linear(d, h, ("embed", "mlp"), **opts)
        self.w2 = linear(h, d, ("mlp", "embed"), **opts)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        k1, k2, k3 = dropout_keys(dropout_key, 3)
        return self.w2(jax.nn.silu(self.w1(x, dropout_key=k1)) * self.w3(x, dropout_key=k3), dropout_key=k2)


class Block(nnx.Module):
    """Pre-norm transformer block (Meta ``TransformerBlock``):
    ``h = x + attn(attention_norm(x))``; ``out = h + ffn(ffn_norm(h))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(cfg, rngs=rngs)
        self.feed_forward = FeedForward(cfg, rngs=rngs)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array | None, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        k_attn, k_ffn = dropout_keys(dropout_key, 2)
        h = x + self.attention(self.attention_norm(x), positions, mask, k_attn)
        return h + self.feed_forward(self.ffn_norm(h), k_ffn)

    def extend(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache, fill: jax.Array
    ) -> tuple[jax.Array, KVCache]:
        """The block over ``m`` new tokens with a key/value cache (see ``Attention.extend``)."""
        attn, cache = self.attention.extend(self.attention_norm(x), positions, mask, cache, fill)
        h = x + attn
        return h + self.feed_forward(self.ffn_norm(h)), cache
