"""Precompute per-token tables once per dataset, streamed beside each batch (``data.pipeline.TokenTable``).

* The Rho-1 reference's next-token CE (``docs/formulas.md``, "Rho-1 weights"): with it (``batch["ref_ce"]``) a
  Rho-1 step runs no reference forward and costs the same as a baseline step. Values are target-token aligned:
  ``ce[t] = -log p_ref(x_t | x_<t)`` at the response tokens (loss mask 1), the only ones a weighting reads, and 0
  elsewhere: what the in-step reference forward computes there, up to float32 summation order (only the response
  tokens are projected onto the vocabulary, ``losses.valid_token_ce``).
* Token Cleaning's labels (``docs/formulas.md``, "Token Cleaning"; ``weighting.token_cleaning``): from the
  next-token CE of a base and a reference model, the top fraction of all response tokens of the split by
  ``CE_base - CE_ref`` get label 1 (``token_cleaning_labels``).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from wmtp_jax import sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.data.pipeline import JsonlRecords, PipelineConfig, TokenizeRecord, TokenTable, make_dataset
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
    name: str = "ref_ce",
) -> str:
    """Writes the next-token CE of the model in ``reference_dir`` as ``{prefix}.{name}.npy`` and
    ``{prefix}.{name}_start.npy`` beside ``jsonl``; returns the prefix.

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
        return next_token_ce(m, batch, batch["tokens"].size)  # every response token fits; prompts are not projected

    values, lengths = [], []
    for batch in tqdm(ds, total=len(rows) // batch_size, desc=f"{name} CE", unit="batch", disable=not progress):
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
    _write_table(prefix, name, np.concatenate(values), np.concatenate([[0], np.cumsum(lengths)]))
    return prefix


def _write_table(prefix: str, name: str, values: np.ndarray, start: np.ndarray) -> None:
    for suffix, array in ((f".{name}.npy", values.astype(np.float32)), (f".{name}_start.npy", start.astype(np.int64))):
        with atomic_path(prefix + suffix) as tmp:
            np.save(tmp, array)


def token_cleaning_labels(
    jsonl,
    *,
    ratio: float = 0.6,
    base: str = "base_ce",
    reference: str = "ref_ce",
    max_length: int = 2048,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
) -> dict:
    """Token Cleaning's fixed-model labels (Pang et al. 2025, arXiv 2502.01968, section 3): from the tables
    ``{prefix}.{base}.npy`` and ``{prefix}.{reference}.npy`` (``precompute_reference_ce`` of the base and of the
    reference model), the score ``CE_base - CE_ref`` of every response token of the split (loss mask 1, records
    truncated at ``max_length`` as in training) is ranked over the whole split, and the ``ceil(ratio * N)`` best
    get label 1, every other token 0. Writes ``{prefix}.token_labels.npy`` (+ ``_start``); returns
    ``{"prefix", "response_tokens", "kept", "threshold"}`` (threshold: the lowest kept score, nats).

    Raises:
      ValueError: the tables and the split disagree on a record's length (stale tables), or ``ratio`` is
        outside (0, 1].
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"token cleaning ratio={ratio}: expected a fraction in (0, 1]")
    prefix = table_prefix(jsonl)
    base_table, ref_table = TokenTable(prefix, base), TokenTable(prefix, reference)
    if not np.array_equal(base_table.start, ref_table.start):
        raise ValueError(f"{prefix}.{base}.npy and {prefix}.{reference}.npy cover different records (recompute both)")
    index = RecordIndex.load(index_path(jsonl))
    records = JsonlRecords(jsonl, index.offsets(np.arange(len(index))), np.arange(len(index)))
    tokenize = TokenizeRecord(tokenizer or Tokenizer(), max_length)
    response = np.zeros(len(base_table.values), bool)
    for row in tqdm(range(len(index)), desc="token labels", unit="record", disable=not progress):
        mask = tokenize.map(records[row])["loss_mask"]
        lo, hi = int(base_table.start[row]), int(base_table.start[row + 1])
        if hi - lo != len(mask):
            raise ValueError(
                f"{prefix}.{base}.npy: row {row} has {hi - lo} values for a {len(mask)}-token record (recompute it)"
            )
        response[lo:hi] = mask.astype(bool)
    score = np.asarray(base_table.values, np.float64) - np.asarray(ref_table.values, np.float64)
    candidates = np.flatnonzero(response)
    k = math.ceil(ratio * len(candidates))
    kept = candidates[np.argsort(-score[candidates], kind="stable")[:k]]
    labels = np.zeros(len(score), np.float32)
    labels[kept] = 1.0
    _write_table(prefix, "token_labels", labels, base_table.start)
    threshold = float(score[kept].min()) if k else float("nan")
    return {"prefix": prefix, "response_tokens": int(len(candidates)), "kept": int(k), "threshold": threshold}
