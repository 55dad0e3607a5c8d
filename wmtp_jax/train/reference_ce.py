"""Precompute the Rho-1 reference's next-token CE once per dataset (``docs/formulas.md``, "Rho-1 weights").

With the table streamed beside each batch (``batch["ref_ce"]``), a Rho-1 step runs no reference forward and
costs the same as a baseline step. Values are target-token aligned: ``ce[t] = -log p_ref(x_t | x_<t)``
(0 at t = 0), exactly what the in-step reference forward computes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wmtp_jax import sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.data.pipeline import PipelineConfig, make_dataset
from wmtp_jax.data.records import RecordIndex, index_path
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.files import atomic_path
from wmtp_jax.train.objectives import reference_ce as next_token_ce


def table_prefix(jsonl: str | os.PathLike) -> str:
    return os.fspath(jsonl).removesuffix(".jsonl")


def precompute_reference_ce(
    reference_dir,
    jsonl,
    *,
    mesh=None,
    batch_size: int = 8,
    buckets: tuple[int, ...] = (512, 1024, 2048),
    tokenizer: Tokenizer | None = None,
    dtype: str = "bfloat16",
    progress: bool = True,
) -> str:
    """Writes ``{prefix}.ref_ce.npy`` and ``{prefix}.ref_ce_start.npy`` beside ``jsonl``; returns the prefix.

    ``buckets`` must have the same maximum as the training run's ``data.buckets`` (records are truncated
    identically).
    """
    mesh = mesh or sharding.make_mesh()
    batch_size = -(-batch_size // mesh.size) * mesh.size
    model = load_model(reference_dir, mesh, dtype=dtype, param_dtype=dtype)  # frozen: no float32 master copy
    graphdef, state = nnx.split(model)
    index = RecordIndex.load(index_path(jsonl))
    n = len(index)
    rows = np.arange(-(-n // batch_size) * batch_size) % max(n, 1)  # whole batches; extra rows are dropped
    ds = make_dataset(
        jsonl,
        index.offsets(rows),
        tokenizer or Tokenizer(),
        PipelineConfig(batch_size=batch_size, buckets=tuple(buckets)),
        rows=rows,
    )

    @jax.jit
    def reference_ce(state, batch):
        m = nnx.merge(graphdef, state)
        return next_token_ce(m, batch)

    values, lengths = [], []
    for batch in tqdm(ds, total=len(rows) // batch_size, desc="reference CE", unit="batch", disable=not progress):
        ce = np.asarray(
            reference_ce(
                state,
                jax.device_put(
                    {k: batch[k] for k in ("tokens", "loss_mask", "segment_ids", "positions")},
                    sharding.batch_sharding(mesh),
                ),
            )
        )
        for i, length in enumerate(batch["segment_ids"].sum(axis=1)):
            if len(lengths) < n:
                values.append(ce[i, :length])
                lengths.append(int(length))
    prefix = table_prefix(jsonl)
    start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for name, array in ((".ref_ce.npy", np.concatenate(values).astype(np.float32)), (".ref_ce_start.npy", start)):
        with atomic_path(prefix + name) as tmp:
            np.save(tmp, array)
    return prefix
