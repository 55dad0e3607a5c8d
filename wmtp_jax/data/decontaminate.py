"""Decontamination: training records that share a long n-gram with an evaluation problem are dropped.

A record is contaminated when its instruction or its solution shares at least one n-gram (default n = 13, the
choice of GPT-3's contamination study, Brown et al. 2020, appendix C) with the statement or the reference
solution of an evaluation problem. Texts are normalised before n-grams are taken: lowercased and split on runs
of whitespace, so indentation, spacing and line breaks never hide an overlap (code tokens stay as written:
``range(n):`` is one token). Texts shorter than n tokens have no n-gram and match nothing.

The evaluation sets are by default every benchmark the eval job reads: HumanEval (prompt + canonical solution)
and the MBPP test split (statement, code), plus any CodeContests or Alpaca files given (statements and
solutions; e.g. the CodeContests test and valid parquet shards). Each match is reported with the evaluation
problem it overlaps (``wmtp_jax.data.prepare`` writes them to ``{split}.report.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

DEFAULT_N = 13


def normalised_tokens(text: str) -> list[str]:
    """The whitespace-separated tokens of ``text``, lowercased."""
    return text.lower().split()


def ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    tokens = normalised_tokens(text)
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


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
    """An index of the n-grams of evaluation problems; ``overlap(record)`` finds a training record's first match.

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
        seen = set()
        for benchmark, task_id, text in problems:
            for gram in ngrams(text, n):
                self.index.setdefault(hash(gram), (benchmark, task_id))
            if (benchmark, task_id) not in seen:
                seen.add((benchmark, task_id))
                self.sources[benchmark] = self.sources.get(benchmark, 0) + 1

    def overlap(self, instruction: str, output: str) -> Overlap | None:
        for field, text in (("instruction", instruction), ("output", output)):
            for gram in ngrams(text, self.n):
                hit = self.index.get(hash(gram))
                if hit is not None:
                    return Overlap(field, *hit)
        return None

    def describe(self) -> dict:
        return {"n": self.n, "normalisation": "lowercase, whitespace-separated tokens", "problems": self.sources}


def evaluation_problems(extra_files: Iterable[str | Path] = ()) -> Iterator[tuple[str, str, str]]:
    """The default evaluation sets as ``(benchmark, task_id, text)``: HumanEval, the MBPP test split, and every
    problem of ``extra_files`` (CodeContests parquet / JSONL with original field names, or Alpaca JSONL)."""
    from wmtp_jax.data import assets
    from wmtp_jax.data.prepare import humaneval_problems, mbpp_problems, read_rows

    for problem in humaneval_problems(assets.HUMANEVAL):
        for rec in problem.records:
            yield "humaneval", problem.problem_id, rec.output  # prompt (docstring) + canonical solution
    for problem in mbpp_problems(assets.MBPP, "test"):
        for rec in problem.records:
            yield "mbpp_test", problem.problem_id, rec.instruction
            yield "mbpp_test", problem.problem_id, rec.output
    for path in map(Path, extra_files):
        for location, obj, reason in read_rows(path):
            if obj is None:
                raise ValueError(f"decontamination file {location}: {reason}")
            task_id = str(obj.get("name") or obj.get("task_id") or location)
            texts = [obj.get("description"), obj.get("instruction"), obj.get("output")]
            for group in ("solutions", "incorrect_solutions"):
                solutions = obj.get(group)
                if isinstance(solutions, dict):
                    texts += list(solutions.get("solution") or [])
            for text in texts:
                if isinstance(text, str) and text:
                    yield path.name, task_id, text
