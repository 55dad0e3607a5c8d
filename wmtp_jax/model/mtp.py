"""Meta's multi-token-prediction transformer (7B_1T_4 and friends) in Flax NNX.

Source: facebook/multi-token-prediction ``llama/model.py`` and Gloeckle et al. 2024, "Better & Faster
Large Language Models via Multi-token Prediction", section 2: a shared trunk of
``n_layers - n_future_tokens`` blocks, then ``n_future_tokens`` head blocks applied *in parallel* to the
trunk output, a shared final RMSNorm and a shared, untied output projection. Head k (0-based) at
position t predicts token t+k+1. An optional value head ``Linear(d -> 1)`` (zero-initialised) reads the
normalised trunk state for the TD-weighted objectives (``docs/formulas.md``, "TD-exp weights").

The trunk blocks are stored as one stacked ``Block`` (every parameter has a leading ``layers`` axis, the
Flax NNX / MaxText "scanned layers" layout), and so are the heads. The forward pass runs them as one
``lax.scan`` (``lax.map`` for the parallel heads) over those stacks, so only one block's weights are cast,
gathered and differentiated at a time, and the gradient lands directly in the stacked float32 buffer.
On disk, model directories keep Meta's per-layer names (``wmtp_jax.checkpoint.store``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from wmtp_jax.model.config import REMAT_POLICIES, ModelConfig
from wmtp_jax.model.layers import Block, KVCache, RMSNorm, _param, dropout_keys, linear
from wmtp_jax.sharding import constrain_batch, place, state_shardings

STACKED_GROUPS = ("layers", "heads")  # attributes of MTPTransformer holding stacked blocks (leading "layers" axis)


class MTPOutput(NamedTuple):
    """What the losses need, without materialising ``[B, S, H, V]`` logits.

    head_hidden: ``[B, S, H, d]`` (compute dtype) — each head's output after the shared final norm;
      ``MTPTransformer.logits`` maps it to the vocabulary.
    values: float32 ``[B, S]`` — value estimates V(s_t) from the value head (None for a model without one).
    value_input: ``[B, S, d]`` — what the value head reads, the final norm of the trunk's output (None without a
      value head); the critic's value clipping applies its stage-1 weights to it.
    """

    head_hidden: jax.Array
    values: jax.Array
    value_input: jax.Array | None = None


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """Causal mask restricted to equal segment ids: bool ``[B, 1, S, S]``.

    ``segment_ids`` int ``[B, S]``: 0 marks padding, 1.. mark (packed) sequences. A padding query
    attends only padding keys, so no softmax row is empty.
    """
    s = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((s, s), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None]


def value_output(in_features: int, in_axis: str, param_dtype, rngs: nnx.Rngs):
    """The value head's last layer, ``Linear(in_features -> 1)`` in float32 with a bias, zero-initialised (a fresh
    head predicts 0): the whole linear head, or the MLP head's output."""
    return linear(
        in_features,
        1,
        (in_axis, None),
        dtype=jnp.float32,
        param_dtype=param_dtype,
        use_bias=True,
        init=nnx.initializers.zeros,
        rngs=rngs,
    )


class ValueMLP(nnx.Module):
    """The MLP value head: ``out(dropout(gelu(hidden(x))))``, ``d -> hidden -> 1`` in float32; ``out`` starts at
    zero, so a fresh head predicts 0 like the linear one. Dropout (rate ``dropout``, Srivastava et al. 2014) acts
    only when called with a ``dropout_key`` (training)."""

    def __init__(self, dim: int, hidden: int, *, param_dtype, rngs: nnx.Rngs, dropout: float = 0.0):
        self.hidden = linear(
            dim, hidden, ("embed", "mlp"), dtype=jnp.float32, param_dtype=param_dtype, use_bias=True, rngs=rngs
        )
        self.dropout = nnx.Dropout(dropout)
        self.out = value_output(hidden, "mlp", param_dtype, rngs)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        h = self.dropout(jax.nn.gelu(self.hidden(x)), deterministic=dropout_key is None, rngs=dropout_key)
        return self.out(h)


def with_mlp_value_head(model, hidden: int, mesh: jax.sharding.Mesh | None = None, seed: int = 0, dropout: float = 0.0):
    """Replaces ``model``'s value head by a fresh ``ValueMLP`` of width ``hidden`` (zero output, training dropout
    ``dropout``), placed in its shardings over ``mesh``, and records it in ``model.cfg`` (so ``save_model`` /
    ``load_model`` keep it). Returns ``model``."""
    model.cfg = model.cfg.replace(value_head_hidden=hidden, value_head_dropout=dropout)
    model.value_head = ValueMLP(
        model.cfg.dim, hidden, param_dtype=model.cfg.weight_dtype, rngs=nnx.Rngs(seed), dropout=dropout
    )
    if mesh is not None:
        place(model.value_head, mesh)
    return model


class MTPTransformer(nnx.Module):
    """LLaMA trunk + ``n_future_tokens`` parallel heads + value head.

    Parameters follow Meta's state-dict names: ``tok_embeddings``, ``layers`` (the trunk blocks, stacked:
    ``layers.attention.wq`` is ``[n_trunk_layers, d, d]``), ``heads`` (Meta's ``layers[-1]`` followed by
    ``extra_heads``, stacked: ``[n_future_tokens, ...]``), ``norm``, ``output`` (a projection module whose
    ``kernel`` is ``[d, vocab]``), plus ``value_head`` (``value_head=False``: none, ``values`` is None).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, value_head: bool = True):
        self.cfg = cfg
        pd = cfg.weight_dtype
        self.tok_embeddings = _param(rngs, (cfg.vocab_size, cfg.dim), ("vocab", "embed"), pd)
        self.layers = stacked_blocks(cfg, cfg.n_trunk_layers, rngs)
        self.heads = stacked_blocks(cfg, cfg.n_future_tokens, rngs)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.output = linear(
            cfg.dim,
            cfg.vocab_size,
            ("embed", "vocab"),
            dtype=cfg.compute_dtype,
            param_dtype=pd,
            out_dtype=jnp.float32,
            rngs=rngs,
        )
        if not value_head:
            self.value_head = nnx.data(None)
        elif cfg.value_head_hidden:
            self.value_head = ValueMLP(
                cfg.dim, cfg.value_head_hidden, param_dtype=pd, rngs=rngs, dropout=cfg.value_head_dropout
            )
        else:
            self.value_head = value_output(cfg.dim, "embed", pd, rngs)

    def forward(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> MTPOutput:
        """Runs trunk, heads and value head.

        Args:
          tokens: int32 ``[B, S]``.
          positions: int32 ``[B, S]`` RoPE positions; default ``0..S-1``.
          segment_ids: int32 ``[B, S]``, 0 = padding; default: one unpadded sequence per row.
          dropout_key: a PRNG key for the training-time dropout of the LoRA adapters (``model.lora.dropout``) and
            the MLP value head (``value_head_dropout``); None (default) = no dropout.
        Returns:
          ``MTPOutput(head_hidden [B, S, H, d], values float32 [B, S])``.
        """
        cfg = self.cfg
        b, s = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        mask = None if segment_ids is None else attention_mask(segment_ids)
        h = constrain_batch(jnp.take(self.tok_embeddings[...], tokens, axis=0).astype(cfg.compute_dtype))

        policy = REMAT_POLICIES[cfg.remat]
        k_trunk, k_value, k_heads = dropout_keys(dropout_key, 3)
        h = _chain_blocks(self.layers, h, positions, mask, policy, scan=cfg.scan_layers, key=k_trunk)
        value_input = values = None
        if self.value_head is not None:
            value_input = self.norm(h)
            values = constrain_batch(self.value_head(value_input, dropout_key=k_value)[..., 0])
        head_out = _parallel_blocks(self.heads, h, positions, mask, policy, scan=cfg.scan_layers, key=k_heads)
        return MTPOutput(head_hidden=constrain_batch(self.norm(head_out)), values=values, value_input=value_input)

    def has_dropout(self) -> bool:
        """Whether a ``dropout_key`` changes the forward pass (LoRA adapter dropout or MLP value-head dropout)."""
        return any(
            (isinstance(m, nnx.Dropout) and m.rate > 0) or getattr(m, "lora_dropout", 0.0) > 0
            for _, m in nnx.iter_modules(self)
        )

    def init_cache(self, batch: int, slots: int, n_heads: int) -> list[KVCache]:
        """Empty key/value caches for the trunk and the first ``n_heads`` heads: ``[B, T, kv_heads, head_dim]``."""
        cfg = self.cfg
        shape = (batch, slots, cfg.kv_heads, cfg.head_dim)
        return [
            KVCache(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
            for _ in range(cfg.n_trunk_layers + n_heads)
        ]

    def extend(
        self, tokens: jax.Array, cache: list[KVCache], fill: jax.Array, start: jax.Array
    ) -> tuple[jax.Array, list[KVCache]]:
        """Runs ``m`` new tokens per row against the key/value cache (prefill: ``fill = 0``; decode: ``m >= 1``).

        Cache slot ``j`` of row ``b`` holds that row's token at position ``j - start[b]``; slots before
        ``start[b]`` are (left) padding and never attended. The heads used are the first ``len(cache) -
        n_trunk_layers`` (1 for plain decoding, all for self-speculative decoding).

        Args:
          tokens: int32 ``[B, m]``, written to slots ``fill[b] .. fill[b] + m - 1``.
          cache: from ``init_cache`` or a previous call.
          fill: int32 ``[B]`` first free slot per row; start: int32 ``[B]`` first real slot per row.
        Returns:
          (head hidden states ``[B, m, n_heads_used, d]`` after the shared final norm — ``logits`` maps the
          ones needed to the vocabulary —, updated cache). Head k at a new token predicts the token k + 1
          positions after it.
        """
        cfg = self.cfg
        n_trunk = cfg.n_trunk_layers
        b, m = tokens.shape
        slots = cache[0].k.shape[1]
        query = fill[:, None] + jnp.arange(m, dtype=jnp.int32)  # [B, m] slot of each new token
        key = jnp.arange(slots, dtype=jnp.int32)
        sees = (key >= start[:, None, None]) & (key <= query[:, :, None])
        mask = (sees | (key == query[:, :, None]))[:, None]  # a padding query sees itself: no empty softmax row
        positions = jnp.maximum(query - start[:, None], 0)
        h = jnp.take(self.tok_embeddings[...], tokens, axis=0).astype(cfg.compute_dtype)
        new_cache = []
        for block, layer_cache in zip(unstack(self.layers), cache[:n_trunk]):
            h, layer_cache = block.extend(h, positions, mask, layer_cache, fill)
            new_cache.append(layer_cache)
        outs = []
        for head, layer_cache in zip(unstack(self.heads, len(cache) - n_trunk), cache[n_trunk:]):
            out, layer_cache = head.extend(h, positions, mask, layer_cache, fill)
            outs.append(out)
            new_cache.append(layer_cache)
        return self.norm(jnp.stack(outs, axis=2)), new_cache

    def logits(self, head_hidden: jax.Array) -> jax.Array:
        """Shared output projection: ``[..., d]`` -> float32 ``[..., vocab]`` (compute-dtype matmul, float32
        accumulation)."""
        return self.output(head_hidden)

    def output_projection(self):
        """The shared output projection as a function ``[..., d] -> float32 [..., vocab]`` for losses that project
        a chunk of positions at a time (``losses.token_ce``): the kernel is cast to the compute dtype once, not
        once per chunk."""
        dt = self.cfg.compute_dtype
        kernel = self.output.kernel[...].astype(dt)
        return lambda h: jnp.einsum("...d,dv->...v", h.astype(dt), kernel, preferred_element_type=jnp.float32)

    def __call__(
        self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
    ) -> jax.Array:
        """float32 logits ``[B, S, n_future_tokens, vocab]``; head k at t predicts token t+k+1."""
        return self.logits(self.forward(tokens, positions, segment_ids).head_hidden)


def stacked_blocks(cfg: ModelConfig, n: int, rngs: nnx.Rngs) -> Block:
    """``n`` independently initialised blocks as one ``Block`` whose parameters have a leading ``layers``
    axis of size ``n`` (``nnx.vmap`` over the constructor; the axis is added to the logical sharding names)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=rngs)

    return make(rngs)


def unstack(stack: Block, n: int | None = None) -> list[Block]:
    """The first ``n`` (default: all) blocks of a stacked ``Block``, as plain blocks (slices of its parameters)."""
    graphdef, state = nnx.split(stack)
    n = _stack_size(state) if n is None else n
    return [nnx.merge(graphdef, _block_state(state, i)) for i in range(n)]


def _stack_size(state) -> int:
    return jax.tree.leaves(state)[0].shape[0]


def _block_state(state, i: int):
    """Block ``i``'s parameters from a stacked state."""
    return jax.tree.map(lambda x: x[i], state)


def _block_fn(stack: Block, positions, mask, policy):
    """``apply(one_block_state, h, dropout_key) -> block output`` for the blocks of ``stack``, under
    ``jax.checkpoint`` with ``policy`` (None: no rematerialisation)."""
    graphdef, _ = nnx.split(stack)

    def apply(state, h, key):
        return constrain_batch(nnx.merge(graphdef, state)(h, positions, mask, key))

    return apply if policy is None else jax.checkpoint(apply, policy=policy)


def _layer_keys(key, n: int):
    """Per-block dropout keys ``[n]`` (block i: ``fold_in(key, i)``), or None without dropout."""
    return None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _chain_blocks(stack: Block, h, positions, mask, policy, *, scan: bool, key=None):
    """The stacked blocks applied one after another (the trunk). ``scan``: one ``lax.scan`` over the stack
    (one compiled block, buffers reused from layer to layer); else an unrolled Python loop (same result).
    ``key``: dropout key (block i gets ``fold_in(key, i)``), or None."""
    state = nnx.state(stack)
    apply = _block_fn(stack, positions, mask, policy)
    n = _stack_size(state)
    keys = _layer_keys(key, n)
    if scan:
        return jax.lax.scan(lambda h, xs: (apply(xs[0], h, xs[1]), None), h, (state, keys))[0]
    for i in range(n):
        h = apply(_block_state(state, i), h, None if keys is None else keys[i])
    return h


def _parallel_blocks(stack: Block, h, positions, mask, policy, *, scan: bool, key=None):
    """The stacked blocks applied to the same input (the parallel MTP heads): ``[B, S, n_blocks, d]``.
    ``scan``: one ``lax.map`` over the stack (one head's weights and gradients at a time); else unrolled.
    ``key``: dropout key (head i gets ``fold_in(key, i)``), or None."""
    state = nnx.state(stack)
    apply = _block_fn(stack, positions, mask, policy)
    n = _stack_size(state)
    keys = _layer_keys(key, n)
    if scan:
        return jnp.moveaxis(jax.lax.map(lambda xs: apply(xs[0], h, xs[1]), (state, keys)), 0, 2)
    return jnp.stack([apply(_block_state(state, i), h, None if keys is None else keys[i]) for i in range(n)], axis=2)


def create_model(cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int = 0, **kwargs) -> MTPTransformer:
    """A randomly initialised ``MTPTransformer(cfg, **kwargs)`` whose parameters are created directly in their
    shardings over ``mesh``.

    Initialisation runs under ``jax.jit`` with ``out_shardings``, so each device only materialises its shard.
    (Fine-tuning restores with ``wmtp_jax.checkpoint.load_model`` instead.)
    """

    def make():
        return MTPTransformer(cfg, rngs=nnx.Rngs(seed), **kwargs)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.state(make()), out_shardings=state_shardings(abstract_state, mesh))()
    return nnx.merge(graphdef, state)
