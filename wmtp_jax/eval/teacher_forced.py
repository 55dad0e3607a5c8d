"""Per-head cross-entropy of benchmark reference solutions, teacher-forced: cheap, deterministic and comparable
across arms (no sampling, no execution).

For each problem with a reference solution, the row is ``BOS + prompt + reference + EOS`` with the loss mask on
the reference and EOS; head k's CE is averaged over its valid targets (head k at position p predicts token p+k+1,
``docs/formulas.md``, "The training loss"). Prompts longer than the row keep their last tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmtp_jax import alignment, losses, sharding


def reference_rows(problems, tok, length: int) -> dict[str, np.ndarray] | None:
    """``tokens``, ``loss_mask``, ``segment_ids``, ``positions`` int32 ``[N, length]`` for the problems that have a
    reference (None when none has); padded on the right, prompts cut on the left to fit."""
    rows = []
    for p in problems:
        if not p.reference:
            continue
        answer = tok.encode(p.reference) + [tok.eos_id]
        prompt = tok.encode(p.prompt, bos=True)[-max(1, length - len(answer)) :]
        ids = (prompt + answer)[:length]
        rows.append((ids, len(prompt)))
    if not rows:
        return None
    n = len(rows)
    out = {k: np.zeros((n, length), np.int32) for k in ("tokens", "loss_mask", "segment_ids")}
    for i, (ids, n_prompt) in enumerate(rows):
        out["tokens"][i, : len(ids)] = ids
        out["segment_ids"][i, : len(ids)] = 1
        out["loss_mask"][i, n_prompt : len(ids)] = 1
    out["positions"] = np.tile(np.arange(length, dtype=np.int32), (n, 1))
    return out


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def head_ce_sums(graphdef, states: tuple, batch: dict[str, jax.Array], *, chunk: int = 256):
    """``(sum of CE [H], valid targets [H])`` of the model ``nnx.merge(graphdef, *states)`` on ``batch`` (teacher
    forced; every head). Compiled once per model graph and batch shape: the validation loss and the reference
    CE of every evaluation reuse it."""
    m = nnx.merge(graphdef, *states)
    out = m.forward(batch["tokens"], batch["positions"], batch["segment_ids"])
    targets, valid = alignment.mtp_targets(
        batch["tokens"], batch["loss_mask"], batch["segment_ids"], m.cfg.n_future_tokens
    )
    # only the valid targets are projected (prompt and padding positions carry no loss): the cost follows them
    ce, _ = losses.valid_token_ce(
        m.output_projection(), out.head_hidden, targets, valid, capacity=valid.size, chunk=chunk
    )
    return jnp.sum(ce, axis=(0, 1)), valid.sum(axis=(0, 1))  # ce is 0 where not valid


def head_ce(model, mesh, rows: dict[str, np.ndarray], batch_size: int = 8, chunk: int = 256) -> np.ndarray:
    """float64 ``[n_future_tokens]``: each head's mean CE (nats per target) over the valid targets of ``rows``,
    computed ``batch_size`` rows at a time (rounded up to the data-parallel devices; extra rows are padding)."""
    graphdef, state = nnx.split(model)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards

    total = count = 0.0
    n = len(rows["tokens"])
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in rows.items()}
        pad = batch_size - len(batch["tokens"])
        if pad:  # padding rows have segment 0: no valid target
            batch = {k: np.concatenate([v, np.zeros((pad, v.shape[1]), v.dtype)]) for k, v in batch.items()}
        s, c = head_ce_sums(graphdef, (state,), jax.device_put(batch, sharding.batch_sharding(mesh)), chunk=chunk)
        total, count = total + np.asarray(s, np.float64), count + np.asarray(c, np.float64)
    return total / np.maximum(count, 1.0)
