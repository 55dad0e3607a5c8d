"""How a completion of a benchmark problem is judged: the program is run in the sandbox and its outcome read.

Assert-style benchmarks (MBPP, HumanEval, synthetic): program = prefix + completion + tests + a print of a random
marker; a completion passes only if the program exits 0 *and* prints the marker, so ``sys.exit(0)`` /
``os._exit(0)`` before the tests is a failure. Stdio benchmarks (CodeContests): one run per test, stdout compared
with the expected output token by token (i.e. after whitespace normalisation).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence

from wmtp_jax.data.benchmarks import Problem
from wmtp_jax.sandbox.execution import STATUSES, ExecutionResult, execute

OUTCOMES = STATUSES  # a completion's outcome is its (first failing) program's status


@dataclasses.dataclass(frozen=True)
class Outcome:
    """``status``: passed / failed / timeout / error; ``detail``: the first failing test's stderr tail or a
    wrong-answer note."""

    status: str
    detail: str = ""


# ------------------------------------------------------------------------------------------------ judging
def _same_output(actual: str, expected: str) -> bool:
    return actual.split() == expected.split()


def check(
    pairs: Sequence[tuple[Problem, str]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    alpaca: bool = False,
) -> list[Outcome]:
    """Runs every (problem, completion) in the sandbox; one ``Outcome`` each, in order.

    ``alpaca``: the completion answers the Alpaca-format prompt (rollouts), so no benchmark prefix is put
    before it. All programs of all pairs go to ``execute`` in one call (run in parallel).
    """
    marker = f"__wmtp_tests_done_{secrets.token_hex(16)}__"
    programs, stdins, owners = [], [], []
    for i, (problem, completion) in enumerate(pairs):
        if alpaca or problem.alpaca:  # a whole program; SentencePiece may decode its first piece with a space
            code = completion.lstrip(" ")
        else:
            code = problem.prefix + completion
        if problem.stdio:  # one run per test; expected stdout kept for the comparison
            for stdin, expected in problem.stdio:
                programs.append(code)
                stdins.append(stdin)
                owners.append((i, expected))
        else:
            programs.append(f"{code}\n\n{problem.tests}\n\nprint({marker!r})\n")
            stdins.append("")
            owners.append((i, None))
    results = execute(programs, timeout_s=timeout_s, memory_mb=memory_mb, stdin=stdins, max_workers=max_workers)
    per_pair: list[list[tuple[ExecutionResult, str | None]]] = [[] for _ in pairs]
    for (i, expected), result in zip(owners, results):
        per_pair[i].append((result, expected))
    return [_judge(runs, marker) for runs in per_pair]


def _judge(runs: list[tuple[ExecutionResult, str | None]], marker: str) -> Outcome:
    for result, expected in runs:
        if result.status != "passed":
            return Outcome(result.status, result.stderr[-500:])
        if expected is None and marker not in result.stdout:
            return Outcome("failed", "exited 0 before the tests finished")
        if expected is not None and not _same_output(result.stdout, expected):
            return Outcome("failed", f"wrong answer: expected {expected[:200]!r}, got {result.stdout[:200]!r}")
    return Outcome("passed")


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = Counter(o.status for o in outcomes)
    return {status: counts.get(status, 0) for status in OUTCOMES}
