"""Grain streaming: JSONL byte offsets -> Alpaca prompt -> tokens + loss mask -> bucketed or packed batches.

One batch, step by step:
  1. ``JsonlRecords[i]`` reads the line at the i-th planned byte offset (``os.pread``: thread- and
     process-safe) and parses it.
  2. ``TokenizeRecord`` builds ``tokens = [BOS] + prompt + output + [EOS]`` and ``loss_mask`` = 1 on the
     output tokens and EOS only (prompt, BOS and padding carry no loss), plus ``rewards`` = is_correct on
     every token.
  3. Batching pads every row to the smallest configured bucket length that fits the batch's longest
     sequence (``segment_ids`` 0 marks padding), or Grain's first-fit packing fills fixed-length rows
     with several sequences (``segment_ids`` 1, 2, ... and positions restarting per sequence).
Targets for head k (token t+k+1) are derived from ``tokens`` and ``loss_mask`` by the loss, not here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from wmtp_jax.data.records import format_prompt
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.schema import Section

FEATURES = ("tokens", "loss_mask", "rewards")


class JsonlRecords:
    """Grain random-access source over selected lines of a JSONL file, addressed by byte offset.

    Each item is the parsed record plus ``"_row"``: its row in the split's index (``rows[i]``, or -1).
    """

    def __init__(self, path: str | os.PathLike, offsets: np.ndarray, rows: np.ndarray | None = None):
        self.path, self.offsets, self._fd = os.fspath(path), np.asarray(offsets, np.int64), None
        self.rows = None if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        offset = int(self.offsets[i])
        chunks, pos = [], offset
        while True:
            chunk = os.pread(self._fd, 1 << 16, pos)
            end = chunk.find(b"\n")
            if end >= 0 or not chunk:
                chunks.append(chunk if end < 0 else chunk[:end])
                break
            chunks.append(chunk)
            pos += len(chunk)
        line = b"".join(chunks)
        try:
            record = json.loads(line)
            record["_row"] = -1 if self.rows is None else int(self.rows[i])
            return record
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: no JSON record at byte {offset} ({e}); is the index stale?") from None

    def __getstate__(self):
        return {"path": self.path, "offsets": self.offsets, "rows": self.rows}

    def __setstate__(self, state):
        self.__init__(state["path"], state["offsets"], state["rows"])

    def __repr__(self) -> str:
        return f"JsonlRecords({self.path!r}, {len(self)} records)"


class TokenTable:
    """A precomputed per-token table (``scripts/precompute_ref_ce.py``), memory-mapped: ``name`` "ref_ce" (the
    Rho-1 reference's next-token CE) or "token_labels" (Token Cleaning's 0/1 labels).

    ``{prefix}.{name}.npy``: float32, every record's token-aligned values concatenated in index-row order;
    ``{prefix}.{name}_start.npy``: int64 ``[N + 1]`` start of each row.

    Raises:
      FileNotFoundError: a file is missing (named, with the script that writes it).
    """

    def __init__(self, prefix: str | os.PathLike, name: str = "ref_ce"):
        self.prefix, self.name = os.fspath(prefix), name
        try:
            self.values = np.load(f"{self.prefix}.{name}.npy", mmap_mode="r")
            self.start = np.load(f"{self.prefix}.{name}_start.npy")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e.filename}: precomputed {name} table not found (run scripts/precompute_ref_ce.py)"
            ) from None

    def row(self, row: int, length: int) -> np.ndarray:
        """float32 ``[length]`` values of index row ``row``; raises ValueError when the table's row has another
        length (the table is stale)."""
        lo, hi = int(self.start[row]), int(self.start[row + 1])
        if hi - lo != length:
            raise ValueError(
                f"{self.prefix}.{self.name}.npy: row {row} has {hi - lo} values for a {length}-token record; "
                "the precomputed table is stale (recompute it)"
            )
        return np.asarray(self.values[lo:hi], np.float32)

    def __getstate__(self):
        return {"prefix": self.prefix, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["prefix"], state["name"])


@dataclasses.dataclass
class TokenizeRecord(grain.transforms.Map):
    """Alpaca record -> ``{"tokens", "loss_mask", "rewards"}`` (int32, int32, float32 ``[L]``), plus one float32
    ``[L]`` entry per precomputed table (``tables``: batch key -> ``TokenTable``).

    Sequences longer than ``max_length`` are cut at ``max_length`` (the EOS is then lost; prepare_data's
    ``--max-length`` should make this rare).
    """

    tokenizer: Tokenizer
    max_length: int
    tables: dict[str, TokenTable] = dataclasses.field(default_factory=dict)

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        prompt = self.tokenizer.encode(format_prompt(record["instruction"], record.get("input", "")), bos=True)
        output = self.tokenizer.encode(record["output"], eos=True)
        tokens = np.asarray(prompt + output, np.int32)[: self.max_length]
        loss_mask = np.zeros(len(tokens), np.int32)
        loss_mask[len(prompt) :] = 1
        rewards = np.full(len(tokens), 1.0 if record.get("is_correct") else 0.0, np.float32)
        out = {"tokens": tokens, "loss_mask": loss_mask, "rewards": rewards}
        for key, table in self.tables.items():
            out[key] = table.row(record["_row"], len(tokens))
        return out


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if n <= b:
            return b
    return max(buckets)


def pad_to_bucket(examples: Sequence[dict[str, np.ndarray]], buckets: Sequence[int], pad_id: int = 0):
    """Stacks examples into ``[B, bucket]`` arrays plus ``segment_ids`` (1 = token, 0 = pad) and ``positions``."""
    length = bucket_length(max(len(e["tokens"]) for e in examples), buckets)
    keys = list(examples[0])
    batch = {k: np.zeros((len(examples), length), examples[0][k].dtype) for k in keys}
    batch["tokens"][:] = pad_id
    batch["segment_ids"] = np.zeros((len(examples), length), np.int32)
    for i, e in enumerate(examples):
        n = min(len(e["tokens"]), length)
        for k in keys:
            batch[k][i, :n] = e[k][:n]
        batch["segment_ids"][i, :n] = 1
    batch["positions"] = np.broadcast_to(np.arange(length, dtype=np.int32), (len(examples), length)).copy()
    return batch


def _rename_packed(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v for k, v in example.items() if not k.endswith(("_segment_ids", "_positions"))}
    out["segment_ids"] = example["tokens_segment_ids"].astype(np.int32)
    out["positions"] = example["tokens_positions"].astype(np.int32)
    return out


@dataclasses.dataclass(frozen=True)
class PipelineConfig(Section):
    batch_size: int  # this process's rows per batch
    buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    pack: bool = False  # first-fit packing into rows of max(buckets) tokens
    num_workers: int = 0  # Grain worker processes (0 = in-process)
    prefetch: int = 2


def make_dataset(
    jsonl: str | os.PathLike,
    offsets: np.ndarray,
    tokenizer: Tokenizer,
    cfg: PipelineConfig,
    rows: np.ndarray | None = None,
    tables: dict[str, TokenTable] | None = None,
) -> grain.IterDataset:
    """The batched Grain dataset over the planned records (in plan order; the plan is already shuffled).

    ``tables``: precomputed per-token tables streamed beside each batch (batch key -> ``TokenTable``); they need
    ``rows`` (the planned index rows) to look up each record's values.
    """
    max_length = max(cfg.buckets)
    tables = tables or {}
    if tables and rows is None:
        raise ValueError("make_dataset: precomputed tables need the planned index rows")
    ds = grain.MapDataset.source(JsonlRecords(jsonl, offsets, rows)).map(TokenizeRecord(tokenizer, max_length, tables))
    if cfg.pack:
        features = FEATURES + tuple(tables)
        it = grain.experimental.FirstFitPackIterDataset(
            ds.to_iter_dataset(),
            length_struct={k: max_length for k in features},
            num_packing_bins=cfg.batch_size,
            shuffle_bins=False,
        )
        it = it.map(_rename_packed).batch(cfg.batch_size, drop_remainder=True)
    else:
        it = ds.batch(
            cfg.batch_size, drop_remainder=True, batch_fn=lambda xs: pad_to_bucket(xs, cfg.buckets, tokenizer.pad_id)
        ).to_iter_dataset()
    if cfg.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; callers outside absl.app have none
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch)
        )
    return it
