"""Batched generation with a key/value cache: jitted prefill, then jitted chunks of decode steps.

Prompts are left-padded to a length bucket; each row may also ask for n samples. Decoding runs on device in
chunks of ``chunk_steps`` steps (``lax.while_loop``); between chunks the host checks stop sequences, so a
run compiles once per (batch, prompt bucket), not once per prompt or per token.

Self-speculative decoding (Gloeckle et al. 2024, section 3.2 / appendix; blockwise parallel decoding of
Stern et al. 2018): the MTP heads 2..n draft the next n - 1 tokens; the next forward feeds the last token
plus the drafts, head 1 verifies them, and the longest prefix of drafts that equals head 1's greedy choice
is accepted (plus head 1's own next token). Greedy only; the output equals plain greedy decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.schema import Section


@dataclasses.dataclass(frozen=True)
class GenerationConfig(Section):
    """max_new_tokens: tokens generated per completion at most; temperature 0 = greedy; top_p: nucleus mass;
    stop: strings that end a completion (cut before them); speculative: self-speculative decoding (greedy
    only); chunk_steps: decode steps between stop-sequence checks; prompt_buckets: padded prompt lengths
    (longer prompts keep their last ``max(prompt_buckets)`` tokens, counted in ``GenerationStats``)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    speculative: bool = False
    chunk_steps: int = 16
    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)

    def __post_init__(self):
        if self.speculative and self.temperature > 0:
            raise ValueError("speculative decoding is greedy only: set temperature=0 or speculative=False")
        if self.max_new_tokens < 1 or self.chunk_steps < 1 or not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError(f"invalid GenerationConfig {self}")


@dataclasses.dataclass(frozen=True)
class Completion:
    """text: the generated continuation (cut before any stop string); tokens: its token ids;
    finish: "stop" (a stop string), "eos" or "length" (max_new_tokens)."""

    text: str
    tokens: tuple[int, ...]
    finish: str


@dataclasses.dataclass
class GenerationStats:
    """Totals over a ``generate`` call; ``forwards`` counts decode forward passes per row (prefill excluded)."""

    completions: int = 0
    tokens: int = 0
    forwards: int = 0
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    truncated_prompts: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.drafts_accepted / max(self.drafts_proposed, 1)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forwards, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Token ids from float32 logits ``[..., V]``: argmax when ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the smallest set of tokens with mass >= ``top_p``
    (Holtzman et al. 2020, nucleus sampling)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # the top token is always kept
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _prefill(state, tokens, start, key, *, graphdef, n_heads, slots, max_new, temperature, top_p, eos_id):
    """Prompt ``[B, P]`` (left-padded; real tokens from ``start``) -> the decode carry after one token."""
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    cache = model.init_cache(b, slots, n_heads)
    hidden, cache = model.extend(tokens, cache, jnp.zeros((b,), jnp.int32), start)
    last = model.logits(hidden[:, -1])  # [B, n_heads, V]: only the last prompt position is needed
    first = sample(last[:, 0], key, temperature, top_p)
    out = jnp.zeros((b, max_new + n_heads), jnp.int32).at[:, 0].set(first)
    return dict(
        cache=cache,
        start=start,
        fill=jnp.full((b,), p, jnp.int32),
        last=first,
        drafts=jnp.argmax(last[:, 1:], axis=-1).astype(jnp.int32),
        out=out,
        n_out=jnp.ones((b,), jnp.int32),
        done=(first == eos_id) | (max_new <= 1),
        forwards=jnp.zeros((b,), jnp.int32),
        accepted=jnp.zeros((b,), jnp.int32),
    )


def _decode(state, carry, key, step0, *, graphdef, steps, max_new, temperature, top_p, eos_id):
    """Up to ``steps`` decode steps (fewer once every row is done); each feeds ``1 + n_drafts`` tokens."""
    model = nnx.merge(graphdef, state)
    write = jax.vmap(lambda row, new, i: jax.lax.dynamic_update_slice(row, new, (i,)))

    def body(i_carry):
        i, c = i_carry
        feed = jnp.concatenate([c["last"][:, None], c["drafts"]], axis=1)  # [B, m]
        m = feed.shape[1]
        hidden, cache = model.extend(feed, c["cache"], c["fill"], c["start"])
        g = sample(model.logits(hidden[:, :, 0]), jax.random.fold_in(key, step0 + i), temperature, top_p)  # [B, m]
        if m > 1:  # drafts accepted while each equals head 1's choice after the previous token
            accepted = jnp.sum(jnp.cumprod(c["drafts"] == g[:, :-1], axis=1), axis=1).astype(jnp.int32)
        else:
            accepted = jnp.zeros_like(c["fill"])
        valid = jnp.arange(m) <= accepted[:, None]
        is_eos = (g == eos_id) & valid
        n_new = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, accepted + 1)
        n_new = jnp.minimum(n_new, max_new - c["n_out"])
        active = ~c["done"]
        rows = jnp.arange(g.shape[0])
        new = dict(
            cache=cache,
            start=c["start"],
            out=jnp.where(active[:, None], write(c["out"], g, c["n_out"]), c["out"]),
            n_out=jnp.where(active, c["n_out"] + n_new, c["n_out"]),
            fill=jnp.where(active, c["fill"] + accepted + 1, c["fill"]),
            last=jnp.where(active, g[rows, accepted], c["last"]),
            drafts=jnp.where(
                active[:, None],  # heads 2..n only at the last accepted token
                jnp.argmax(model.logits(hidden[rows, accepted, 1:]), axis=-1).astype(jnp.int32),
                c["drafts"],
            ),
            forwards=c["forwards"] + active,
            accepted=c["accepted"] + jnp.where(active, accepted, 0),
            done=c["done"] | is_eos.any(axis=1) | (c["n_out"] + n_new >= max_new),
        )
        return i + 1, new

    def cond(i_carry):
        i, c = i_carry
        return (i < steps) & ~jnp.all(c["done"])

    _, carry = jax.lax.while_loop(cond, body, (jnp.int32(0), carry))
    return carry


def _to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one numpy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _to_device(x: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
    """The same host array on every process -> a global array with ``sharding_`` (each process its shards)."""
    return jax.make_array_from_callback(x.shape, sharding_, lambda index: x[index])


def completion_text(tok: Tokenizer, prompt_ids: Sequence[int], ids: Sequence[int], head: str | None = None) -> str:
    """Text of ``ids`` as a continuation of the prompt (SentencePiece drops a leading space when decoding a
    piece on its own, so the continuation is the full decode minus the prompt's decode). ``head``: the
    prompt's decode, when the caller already has it."""
    head = tok.decode(prompt_ids) if head is None else head
    full = tok.decode(list(prompt_ids) + list(ids))
    return full[len(head) :] if full.startswith(head) else tok.decode(ids)


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Generator:
    """Generates completions for a model restored into ``mesh``; batches of ``batch_size`` rows (a multiple of
    the mesh's data-parallel size) are sharded over the batch axes."""

    def __init__(self, model, mesh, tokenizer: Tokenizer, batch_size: int):
        n_batch = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
        if batch_size % n_batch:
            raise ValueError(
                f"generation batch_size={batch_size} must be a multiple of the {n_batch} "
                "data-parallel devices (mesh data x fsdp)"
            )
        self.graphdef, self.state = nnx.split(model)
        self.n_future = model.cfg.n_future_tokens
        self.mesh, self.tok, self.batch_size = mesh, tokenizer, batch_size
        self._fns = {}

    def set_model(self, model) -> None:
        """Generates with ``model``'s parameters from now on, reusing the compiled prefill / decode (the model must
        have this generator's graph: same config, e.g. the live parameters of a training run)."""
        graphdef, self.state = nnx.split(model)
        if graphdef != self.graphdef:
            raise ValueError("Generator.set_model: the model's graph differs from the one this generator compiled for")

    def _compiled(self, name, **static):
        key = (name, tuple(sorted(static.items())))
        if key not in self._fns:
            fn = _prefill if name == "prefill" else _decode
            self._fns[key] = jax.jit(
                functools.partial(fn, graphdef=self.graphdef, **static), donate_argnums=(1,) if name == "decode" else ()
            )
        return self._fns[key]

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, *, n_samples: int = 1, seed: int = 0, progress=None
    ) -> tuple[list[list[Completion]], GenerationStats]:
        """``n_samples`` completions per prompt (``result[i][j]``) and the run's statistics.

        ``progress``: optional callable(n_completed_rows) for a progress bar.
        """
        rows = [(i, j) for i in range(len(prompts)) for j in range(n_samples)]
        encoded = [self.tok.encode(p, bos=True) for p in prompts]
        limit = max(config.prompt_buckets)
        stats = GenerationStats(truncated_prompts=sum(len(e) > limit for e in encoded))
        encoded = [e[-limit:] for e in encoded]
        order = sorted(range(len(rows)), key=lambda r: len(encoded[rows[r][0]]))  # similar lengths together
        results: list[list[Completion | None]] = [[None] * n_samples for _ in prompts]
        start_time = time.perf_counter()
        for b0 in range(0, len(order), self.batch_size):
            batch = order[b0 : b0 + self.batch_size]
            ids = [encoded[rows[r][0]] for r in batch]
            done = self._generate_batch(ids, config, seed * 1_000_003 + b0, stats)
            for r, completion in zip(batch, done):
                i, j = rows[r]
                results[i][j] = completion
            if progress:
                progress(len(batch))
        stats.seconds = time.perf_counter() - start_time
        stats.completions = len(rows)
        return results, stats

    def _generate_batch(
        self, ids: list[list[int]], config: GenerationConfig, seed: int, stats: GenerationStats
    ) -> list[Completion]:
        n_real = len(ids)
        ids = ids + [ids[-1]] * (self.batch_size - n_real)  # a short last batch repeats a row, dropped below
        length = max(map(len, ids))
        p = next(b for b in sorted(config.prompt_buckets) if b >= length)
        n_heads = self.n_future if config.speculative else 1
        slots = -(-(p + config.max_new_tokens + n_heads) // 64) * 64
        tokens = np.full((self.batch_size, p), self.tok.pad_id, np.int32)
        start = np.zeros((self.batch_size,), np.int32)
        for r, row in enumerate(ids):
            tokens[r, p - len(row) :], start[r] = row, p - len(row)
        batch_sharding = sharding.batch_sharding(self.mesh)
        tokens, start = _to_device(tokens, batch_sharding), _to_device(start, batch_sharding)
        common = dict(
            max_new=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, eos_id=self.tok.eos_id
        )
        key = jax.random.key(seed)
        carry = self._compiled("prefill", n_heads=n_heads, slots=slots, **common)(
            self.state, tokens, start, jax.random.fold_in(key, 0)
        )
        decode = self._compiled("decode", steps=config.chunk_steps, **common)
        texts: list[tuple[str, str] | None] = [None] * self.batch_size
        prompt_texts = [self.tok.decode(row) for row in ids]  # each prompt's text, decoded once per batch
        step = 1
        while True:
            done = _to_host(carry["done"]).copy()
            if config.stop:  # rows whose text already holds a stop string are finished
                out, n_out = _to_host(carry["out"]), _to_host(carry["n_out"])
                for r in np.flatnonzero(~done):
                    text = completion_text(self.tok, ids[r], out[r, : n_out[r]], prompt_texts[r])
                    text, hit = _cut(text, config.stop)
                    if hit:
                        texts[r], done[r] = (text, "stop"), True
                carry["done"] = _to_device(done, carry["done"].sharding)
            if done.all():
                break
            carry = decode(self.state, carry, key, jnp.int32(step))
            step += config.chunk_steps
        out, n_out = _to_host(carry["out"]), _to_host(carry["n_out"])
        forwards, accepted = _to_host(carry["forwards"]), _to_host(carry["accepted"])
        completions = []
        for r in range(n_real):
            gen = [int(t) for t in out[r, : n_out[r]]]
            if texts[r] is None:
                eos = bool(gen) and gen[-1] == self.tok.eos_id
                text = completion_text(self.tok, ids[r], gen[:-1] if eos else gen, prompt_texts[r])
                text, hit = _cut(text, config.stop)
                texts[r] = (text, "stop" if hit else "eos" if eos else "length")
            completions.append(Completion(texts[r][0], tuple(gen), texts[r][1]))
            stats.tokens += len(gen)
            stats.forwards += int(forwards[r])
            stats.drafts_proposed += int(forwards[r]) * (n_heads - 1)
            stats.drafts_accepted += int(accepted[r])
        return completions
