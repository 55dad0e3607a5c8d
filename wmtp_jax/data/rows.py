"""The one reader of JSONL (optionally gzip) and parquet rows: data preparation, benchmarks and rollouts read
through it, so a bad line is reported the same way everywhere."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """Yields ``(location, object or None, reason)``; reason is set when the line is unusable."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            loc = f"{path}:{n}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, None, f"non_utf8: {e.reason} at byte {e.start}"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield loc, None, f"malformed_json: {e.msg} at column {e.colno}"
                continue
            if not isinstance(obj, dict):
                yield loc, None, f"malformed_json: expected an object, got {type(obj).__name__}"
                continue
            yield loc, obj, ""


def _read_parquet(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for obj in batch.to_pylist():
            yield f"{path}:row {row}", obj, ""
            row += 1


def read_rows(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """``(location, object or None, reason)`` per row of a ``.parquet`` file (``"file:row N"``) or a JSONL file
    (``"file:line"``, ``.gz`` read compressed); reason (non_utf8 / malformed_json) is set when a line is unusable."""
    return _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
