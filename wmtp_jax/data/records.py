"""Alpaca records, the prompt template, and the compact per-record index used for sampling.

Record (one JSON object per line, ``docs/formulas.md``, "Data")::

    {"instruction": str, "input": str, "output": str, "task_id": str, "is_correct": bool,
     "metadata": {"source": str, "difficulty": int, "has_tests": bool, ...}}

Index (``{split}.index.npz``): records are written grouped by problem, so the index holds 8 bytes per
record (byte offset, token length, is_correct) plus one row per problem (first record, difficulty,
problem id). 3.7M records (CodeContests train) take 29.6 MB.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from wmtp_jax.files import atomic_path

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def index_path(jsonl: str | os.PathLike) -> Path:
    """The ``{split}.index.npz`` written beside a prepared ``{split}.jsonl``."""
    jsonl = Path(jsonl)
    return jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".index.npz")


def format_prompt(instruction: str, input: str = "") -> str:
    """The Stanford Alpaca prompt; the Input section is omitted when ``input`` is empty."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


CODECONTESTS_EXAMPLES = 2  # public tests shown in a CodeContests record's input (the data design)


def codecontests_input(public_tests: dict | None, n: int = CODECONTESTS_EXAMPLES) -> str:
    """The Alpaca ``input`` of a CodeContests problem: its first ``n`` public tests as worked examples,
    ``"Example 1\nInput:\n...\nOutput:\n..."`` separated by blank lines ("" when there are none or ``n`` = 0).

    ``public_tests``: the dataset's ``{"input": [str], "output": [str]}`` (None or malformed = no examples)."""
    if not n or not isinstance(public_tests, dict):
        return ""
    inputs, outputs = public_tests.get("input") or [], public_tests.get("output") or []
    pairs = [(i, o) for i, o in zip(inputs, outputs) if isinstance(i, str) and isinstance(o, str)][:n]
    return "\n\n".join(
        f"Example {k}\nInput:\n{i.rstrip()}\nOutput:\n{o.rstrip()}" for k, (i, o) in enumerate(pairs, start=1)
    )


@dataclasses.dataclass(frozen=True)
class AlpacaRecord:
    instruction: str
    input: str
    output: str
    task_id: str
    is_correct: bool
    metadata: dict

    def to_json_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy of metadata was a third of data preparation's time
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# 8 bytes per record: a 40-bit byte offset (files up to 1 TiB), flags (bit 0 = is_correct), token length.
RECORD_DTYPE = np.dtype([("offset_lo", "<u4"), ("offset_hi", "u1"), ("flags", "u1"), ("length", "<u2")])
MAX_TOKEN_LENGTH = np.iinfo(np.uint16).max


class IndexError_(ValueError):
    """An index file that is missing, truncated or inconsistent with its JSONL."""


@dataclasses.dataclass
class RecordIndex:
    """Metadata of every record of one split, without any record text.

    Attributes:
      records: ``RECORD_DTYPE [N]``, in file order (grouped by problem).
      problem_start: int64 ``[P + 1]``; records of problem p are ``problem_start[p]:problem_start[p + 1]``.
      problem_difficulty: int16 ``[P]`` (CodeContests difficulty code; 0 = unknown).
      problem_id: str ``[P]`` (CodeContests name, ``mbpp/601``, ``HumanEval/0``).
    """

    records: np.ndarray
    problem_start: np.ndarray
    problem_difficulty: np.ndarray
    problem_id: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_problems(self) -> int:
        return len(self.problem_id)

    @property
    def is_correct(self) -> np.ndarray:
        return (self.records["flags"] & 1).astype(bool)

    @property
    def length(self) -> np.ndarray:
        return self.records["length"]

    def offsets(self, rows: np.ndarray | None = None) -> np.ndarray:
        """int64 byte offsets of ``rows`` (all records by default)."""
        r = self.records if rows is None else self.records[rows]
        return r["offset_lo"].astype(np.int64) | (r["offset_hi"].astype(np.int64) << 32)

    def problem_of(self, rows: np.ndarray | None = None) -> np.ndarray:
        """int32 problem number of ``rows`` (all records by default)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        return (np.searchsorted(self.problem_start, rows, side="right") - 1).astype(np.int32)

    def difficulty(self, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            return np.repeat(self.problem_difficulty, np.diff(self.problem_start))
        return self.problem_difficulty[self.problem_of(rows)]

    def save(self, path: str | os.PathLike) -> None:
        """Writes an uncompressed ``.npz`` atomically (temp file + rename)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                records=self.records,
                problem_start=self.problem_start,
                problem_difficulty=self.problem_difficulty,
                problem_id=self.problem_id,
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> RecordIndex:
        try:
            with np.load(path, allow_pickle=False) as z:
                index = cls(z["records"], z["problem_start"], z["problem_difficulty"], z["problem_id"])
        except FileNotFoundError:
            raise IndexError_(f"{path}: index not found; run scripts/prepare_data.py first") from None
        except (KeyError, ValueError, OSError) as e:
            raise IndexError_(f"{path}: not a record index ({e})") from None
        if index.records.dtype != RECORD_DTYPE or index.problem_start[-1] != len(index.records):
            raise IndexError_(
                f"{path}: inconsistent index (dtype {index.records.dtype}, "
                f"{len(index.records)} records, problems end at {index.problem_start[-1]})"
            )
        return index


class IndexBuilder:
    """Accumulates index rows while records are written (grouped by problem)."""

    def __init__(self):
        self._rows: list[tuple[int, bool, int]] = []
        self._problem_start: list[int] = []
        self._difficulty: list[int] = []
        self._problem_id: list[str] = []

    def add(self, offset: int, is_correct: bool, length: int, problem_id: str, difficulty: int) -> None:
        if not self._problem_id or self._problem_id[-1] != problem_id:  # callers write problems contiguously
            self._problem_start.append(len(self._rows))
            self._problem_id.append(problem_id)
            self._difficulty.append(int(difficulty))
        self._rows.append((offset, is_correct, min(length, MAX_TOKEN_LENGTH)))

    def build(self) -> RecordIndex:
        records = np.zeros(len(self._rows), RECORD_DTYPE)
        if self._rows:
            offsets, correct, lengths = (np.asarray(c) for c in zip(*self._rows))
            offsets = offsets.astype(np.int64)
            records["offset_lo"] = offsets & 0xFFFFFFFF
            records["offset_hi"] = offsets >> 32
            records["flags"] = correct.astype(np.uint8)
            records["length"] = lengths
        return RecordIndex(
            records,
            np.asarray(self._problem_start + [len(self._rows)], np.int64),
            np.asarray(self._difficulty, np.int16),
            np.asarray(self._problem_id, dtype=str),
        )
