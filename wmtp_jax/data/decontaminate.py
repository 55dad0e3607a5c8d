"""Decontamination: training records that share a long n-gram with an evaluation problem are dropped.

A record is contaminated when its instruction or its solution shares at least one n-gram (default n = 13, the
choice of GPT-3's contamination study, Brown et al. 2020, appendix C) with the statement or the reference
solution of an evaluation problem. Texts are normalised before n-grams are taken: lowercased and split on runs
of whitespace, so indentation, spacing and line breaks never hide an overlap (code tokens stay as written:
``range(n):`` is one token). Texts shorter than n tokens have no n-gram and match nothing.

The evaluation sets are by default every benchmark the eval job reads: HumanEval (prompt + canonical solution),
the MBPP test split (statement, code), HumanEval+ and MBPP+ (prompt, canonical solution; MBPP+ draws 108 of its
tasks from MBPP's train split and 39 from its validation split, so MBPP training records of those tasks match),
plus any CodeContests or Alpaca files given (statements and solutions; e.g. the CodeContests test and valid
parquet shards). Each match is reported with the evaluation
problem it overlaps (``wmtp_jax.data.prepare`` writes them to ``{split}.report.json``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_N = 13


def normalised_tokens(text: str) -> list[str]:
    """The whitespace-separated tokens of ``text``, lowercased."""
    return text.lower().split()


_BASE = 0x100000001B3  # odd multiplier of the polynomial hash (the 64-bit FNV prime), invertible mod 2^64
_MOD = 1 << 64
_POWERS: list[np.ndarray] = []  # [BASE^t, BASE^-t] for t < len, uint64, grown on demand


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    if not _POWERS or len(_POWERS[0]) < length:
        size = max(length, 2 * len(_POWERS[0]) if _POWERS else 4096)
        inverse = pow(_BASE, -1, _MOD)
        up, down = np.empty(size, np.uint64), np.empty(size, np.uint64)
        a = b = 1
        for t in range(size):
            up[t], down[t] = a, b
            a, b = a * _BASE % _MOD, b * inverse % _MOD
        _POWERS[:] = [up, down]
    return _POWERS[0], _POWERS[1]


def window_hashes(token_lists: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-gram that lies inside one of ``token_lists``: ``(hashes, owner)``, uint64 and int64 ``[W]``
    (``owner``: which list the n-gram comes from), in order.

    ``H = sum_j h(token_{i+j}) * BASE^(n-1-j) mod 2^64``, a polynomial rolling hash (Karp & Rabin 1987) computed for
    all positions of all lists at once from one prefix sum of ``h(token_t) * BASE^-t`` (BASE is odd, so it has an
    inverse mod 2^64): one vectorised pass per batch of texts instead of a loop per n-gram. Token hashes are
    Python's ``hash(str)``, salted per process, so hashes are only comparable within one process (the index and
    the queries are built in the same one). Equal n-grams always collide; distinct ones with probability about
    2^-64 per pair."""
    lengths = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
    total = int(lengths.sum())
    m = total - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    up, down = _powers(total + 1)
    h = np.fromiter(map(hash, itertools.chain.from_iterable(token_lists)), np.int64, total).view(np.uint64)
    prefix = np.zeros(total + 1, np.uint64)
    np.cumsum(h * down[:total], out=prefix[1:])
    hashes = (prefix[n:] - prefix[:m]) * up[n - 1 : n - 1 + m]
    if len(token_lists) == 1:
        return hashes, np.zeros(m, np.int64)
    ends = np.cumsum(lengths)
    starts = np.arange(m)
    owner = np.searchsorted(ends, starts, side="right")
    inside = starts + n <= ends[owner]
    return hashes[inside], owner[inside]


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """uint64 hashes of the n-grams of ``text``'s normalised tokens (``window_hashes`` of one text)."""
    return window_hashes([normalised_tokens(text)], n)[0]


@dataclasses.dataclass(frozen=True)
class Overlap:
    """Where a record overlaps an evaluation problem: the record's ``field`` (instruction / output) and the
    evaluation problem ``benchmark`` / ``task_id``."""

    field: str
    benchmark: str
    task_id: str

    @property
    def reason(self) -> str:
        return f"contaminated:{self.benchmark}"


class Decontaminator:
    """An index of the n-grams of evaluation problems; ``check(records)`` finds each training record's first match.
    A record of the same problem, by namespaced task id ("mbpp/602" is MBPP+'s "Mbpp/602"; case ignored), matches
    whatever its text (field "task_id"): MBPP+ rewrote some statements and solutions of the tasks it took over.

    Args:
      problems: ``(benchmark, task_id, text)`` triples; every text of a problem (statement, solutions) is indexed.
      n: n-gram length in normalised tokens.
    """

    def __init__(self, problems: Iterable[tuple[str, str, str]], n: int = DEFAULT_N):
        if n < 1:
            raise ValueError(f"decontamination n-gram length {n}: expected a positive integer")
        self.n = n
        self.index: dict[int, tuple[str, str]] = {}
        self.sources: dict[str, int] = {}
        self.task_ids: dict[str, tuple[str, str]] = {}
        self._last_instruction: tuple[str, Overlap | None] | None = None
        seen = set()
        for benchmark, task_id, text in problems:
            for h in ngram_hashes(text, n).tolist():
                self.index.setdefault(h, (benchmark, task_id))
            if (benchmark, task_id) not in seen:
                seen.add((benchmark, task_id))
                if "/" in task_id:  # a benchmark's own id, not a file location or a bare number
                    self.task_ids.setdefault(task_id.lower(), (benchmark, task_id))
                self.sources[benchmark] = self.sources.get(benchmark, 0) + 1
        # a one-hash Bloom filter over the low bits: most training n-grams are rejected by one vectorised gather,
        # only the few that pass are looked up in the dict (~32 slots per indexed n-gram: ~3% pass by chance)
        size = 1 << min(max(20, (32 * len(self.index)).bit_length()), 27)
        self._mask = np.uint64(size - 1)
        self._filter = np.zeros(size, bool)
        self._filter[(np.fromiter(self.index, np.uint64, len(self.index)) & self._mask).astype(np.int64)] = True

    def overlaps(self, instruction: str, outputs: Sequence[str]) -> list[Overlap | None]:
        """For records sharing ``instruction``: each one's first overlap (the instruction's, else its output's) or
        None. The outputs are hashed in one vectorised pass; the instruction's verdict is remembered for the next
        call (a problem's records share their statement)."""
        if self._last_instruction is None or self._last_instruction[0] != instruction:
            hashes = ngram_hashes(instruction, self.n).tolist()
            hit = next((Overlap("instruction", *self.index[h]) for h in hashes if h in self.index), None)
            self._last_instruction = (instruction, hit)
        if self._last_instruction[1] is not None:
            return [self._last_instruction[1]] * len(outputs)
        hashes, owner = window_hashes([normalised_tokens(o) for o in outputs], self.n)
        found: list[Overlap | None] = [None] * len(outputs)
        candidates = np.flatnonzero(self._filter[(hashes & self._mask).astype(np.int64)])
        for h, r in zip(hashes[candidates].tolist(), owner[candidates].tolist()):
            if found[r] is None and h in self.index:
                found[r] = Overlap("output", *self.index[h])
        return found

    def check(self, records: Sequence) -> list[Overlap | None]:
        """The first overlap of each record (objects with ``instruction``, ``output`` and optionally ``task_id``):
        the same task first, else n-grams, batched by runs of records that share an instruction."""
        out: list[Overlap | None] = []
        for instruction, group in itertools.groupby(records, key=lambda r: r.instruction):
            group = list(group)
            for record, hit in zip(group, self.overlaps(instruction, [r.output for r in group])):
                same = self.task_ids.get(str(getattr(record, "task_id", "")).lower())
                out.append(Overlap("task_id", *same) if same else hit)
        return out

    def describe(self) -> dict:
        return {"n": self.n, "normalisation": "lowercase, whitespace-separated tokens", "problems": self.sources}
