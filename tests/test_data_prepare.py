"""Data preparation on shipped real data and CodeContests-schema fixtures: counts, splits, bad input."""

import json

import pytest

from data_fixtures import BAD, GOOD, PY3, problem, standard_problems, write_jsonl
from wmtp_jax.data import assets
from wmtp_jax.data.prepare import NothingUsable, prepare
from wmtp_jax.data.records import RecordIndex, format_prompt


def test_mbpp_splits_follow_task_ids(tmp_path):
    results = {r.split: r for r in prepare("mbpp", tmp_path, decontaminate=False)}
    assert {k: r.stats["problems"] + r.stats["filtered"].get("too_long", 0) for k, r in results.items()} == {
        "prompt": 10,
        "test": 500,
        "validation": 90,
        "train": 374,
    }
    for split, (lo, hi) in {
        "prompt": (1, 10),
        "test": (11, 510),
        "validation": (511, 600),
        "train": (601, 974),
    }.items():
        ids = [int(json.loads(line)["task_id"].split("/")[1]) for line in open(tmp_path / f"{split}.jsonl")]
        assert min(ids) >= lo and max(ids) <= hi
    rec = json.loads(open(tmp_path / "train.jsonl").readline())
    assert rec["is_correct"] is True and rec["task_id"] == "mbpp/601"
    assert "\r\n" not in rec["output"] and rec["metadata"]["tests"]["test_list"]
    index = RecordIndex.load(tmp_path / "train.index.npz")
    assert len(index) == 374 and index.is_correct.all()
    stats = json.loads((tmp_path / "train.stats.json").read_text())
    assert (
        stats["sha256"]["inputs"][str(assets.MBPP)]
        == "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"
    )
    assert sum(stats["token_length"]["histogram"].values()) == 374


def test_humaneval_164_problems(tmp_path):
    (result,) = prepare("humaneval", tmp_path)
    assert result.split == "test" and result.n_records == 164
    first = json.loads(open(tmp_path / "test.jsonl").readline())
    assert first["task_id"] == "HumanEval/0" and first["metadata"]["tests"]["entry_point"] == "has_close_elements"


def test_codecontests_python_solutions_with_labels(tmp_path):
    src = write_jsonl(tmp_path / "code_contests_train.jsonl", standard_problems())
    (result,) = prepare("codecontests", tmp_path / "out", [str(src)])
    # per problem: 2 correct Python (py3 + py2) and 1 incorrect Python; C++ / Java filtered and counted
    assert (result.stats["correct"], result.stats["incorrect"], result.stats["problems"]) == (24, 12, 12)
    assert result.report["filtered_by_reason"] == {"not_python:cpp": 24, "not_python:java": 12}
    assert result.report["skipped_total"] == 0
    index = RecordIndex.load(tmp_path / "out" / "train.index.npz")
    lines = open(tmp_path / "out" / "train.jsonl", "rb").read()
    for row in (0, 5, 35):  # the index offsets point at the right records
        rec = json.loads(lines[index.offsets()[row] :].split(b"\n", 1)[0])
        assert rec["is_correct"] == bool(index.is_correct[row])
        assert rec["metadata"]["difficulty"] == index.difficulty()[row]
        assert rec["task_id"] == index.problem_id[index.problem_of([row])[0]]
        assert rec["metadata"]["language"] in ("python2", "python3")


def test_codecontests_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(standard_problems()[:3]), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(standard_problems()[3:5]), tmp_path / "valid-00000-of-00001.parquet")
    results = {
        r.split: r
        for r in prepare("codecontests", tmp_path / "out", [str(p) for p in sorted(tmp_path.glob("*.parquet"))])
    }
    assert {k: r.n_records for k, r in results.items()} == {"train": 9, "valid": 6}


def test_codecontests_input_shows_two_public_tests_and_valid_shards_guard_train(tmp_path):
    """The record's input carries the first two public tests as worked examples (the data design); a train problem
    whose statement appears in a valid shard given alongside is dropped from train (decontamination)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    leaked = "Given a list of integers print the largest sum of any contiguous subarray of it modulo one million"
    train = standard_problems()[:3]
    train[0]["public_tests"] = {"input": ["1\n", "2\n", "3\n"], "output": ["2\n", "4\n", "6\n"]}
    train[2]["description"] = leaked + " (train copy)"
    valid = [problem("valid one", 3, [(PY3, GOOD)], [(PY3, BAD)], description=leaked)]
    pq.write_table(pa.Table.from_pylist(train), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(valid), tmp_path / "valid-00000-of-00001.parquet")
    results = {
        r.split: r
        for r in prepare("codecontests", tmp_path / "out", [str(p) for p in sorted(tmp_path.glob("*.parquet"))])
    }
    assert results["train"].n_records == 6 and results["valid"].n_records == 2  # train[2]'s 3 records dropped
    assert results["train"].stats["decontamination"]["dropped"] == 3
    first = json.loads(open(tmp_path / "out" / "train.jsonl").readline())
    assert first["input"] == "Example 1\nInput:\n1\nOutput:\n2\n\nExample 2\nInput:\n2\nOutput:\n4"
    assert format_prompt(first["instruction"], first["input"]).count("Example") == 2
    (none,) = prepare(
        "codecontests",
        tmp_path / "none",
        [str(tmp_path / "train-00000-of-00001.parquet")],
        codecontests_examples=0,
        decontaminate=False,
    )
    assert json.loads(open(tmp_path / "none" / "train.jsonl").readline())["input"] == ""


def test_every_bad_input_reason_is_counted_and_listed(tmp_path):
    rows = [problem("ok", 2, [(PY3, GOOD)], [(PY3, BAD)])]
    no_desc = problem("no_desc", 2, [(PY3, GOOD)], [])
    del no_desc["description"]
    wrong_type = problem("wrong", 2, [(PY3, GOOD)], [])
    wrong_type["difficulty"] = "hard"
    rows += [
        no_desc,
        wrong_type,
        problem("empty", 2, [(PY3, "   \n")], []),
        problem("unknown_lang", 2, [(0, GOOD), (9, GOOD)], []),
    ]
    src = write_jsonl(
        tmp_path / "cc_train.jsonl", rows, extra_lines=[b'{"name": "broken', b"\xff\xfe not utf8", b"[1, 2]"]
    )
    (result,) = prepare("codecontests", tmp_path / "out", [str(src)])
    assert result.n_records == 2
    report = json.loads((tmp_path / "out" / "train.report.json").read_text())
    assert report["skipped_by_reason"] == {
        "empty_solution": 1,
        "malformed_json": 2,
        "missing_field": 1,
        "non_utf8": 1,
        "unknown_language": 2,
        "wrong_type": 1,
    }
    reasons = {(e["location"].split(":")[-1].split()[0], e["reason"].split(":")[0]) for e in report["skipped"]}
    assert ("2", "missing_field") in reasons and ("6", "malformed_json") in reasons and ("7", "non_utf8") in reasons
    assert any(e["reason"] == "wrong_type: difficulty is str" for e in report["skipped"])


def test_records_over_max_length_are_dropped_and_counted(tmp_path):
    long_code = "x = 1\n" * 400
    src = write_jsonl(tmp_path / "train.jsonl", [problem("p", 2, [(PY3, GOOD), (PY3, long_code)], [])])
    (result,) = prepare("codecontests", tmp_path / "out", [str(src)], max_length=256)
    assert result.n_records == 1 and result.report["filtered_by_reason"] == {"too_long": 1}
    assert RecordIndex.load(tmp_path / "out" / "train.index.npz").length.max() <= 256


def test_nothing_usable_raises_and_leaves_no_partial_files(tmp_path):
    with pytest.raises(NothingUsable):  # the shipped sample has problems but no solutions
        prepare("codecontests", tmp_path, [str(assets.CODECONTESTS_SAMPLE)])
    report = json.loads((tmp_path / "train.report.json").read_text())
    assert report["skipped_total"] == 60 and not list(tmp_path.glob(".*.tmp"))


def test_prompt_template_omits_empty_input():
    assert "### Input:" not in format_prompt("Do X.")
    assert format_prompt("Do X.", "1 2").endswith("### Input:\n1 2\n\n### Response:\n")


def test_cli_exit_codes(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--source", "humaneval", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "164 records (164 correct, 0 incorrect)" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "scripts/prepare_data.py",
            "--source",
            "codecontests",
            "--input",
            str(assets.CODECONTESTS_SAMPLE),
            "--output",
            str(tmp_path / "cc"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "no usable record" in bad.stderr


def test_training_splits_are_decontaminated_against_the_evaluation_sets(tmp_path):
    """MBPP's known near-duplicates across splits, MBPP+'s tasks from the train and validation splits, a HumanEval
    solution re-spaced, and an extra evaluation file."""
    results = {r.split: r for r in prepare("mbpp", tmp_path / "mbpp")}
    filtered = lambda benchmark: {
        k: r.stats["filtered"].get(f"contaminated:{benchmark}", 0) for k, r in results.items()
    }
    # evaluation splits are never filtered; MBPP+ holds 108 train and 39 validation tasks (found by task id) and
    # shares n-grams with a few more
    assert filtered("mbpp_test") == {"prompt": 0, "test": 0, "validation": 3, "train": 15}
    assert filtered("mbpp_plus") == {"prompt": 0, "test": 0, "validation": 41, "train": 112}
    report = json.loads((tmp_path / "mbpp" / "train.report.json").read_text())
    assert {"location", "task_id", "field", "overlaps"} <= set(report["contaminated"][0])
    by_task = {e["task_id"]: e for e in report["contaminated"]}
    assert by_task["mbpp/608"] == {**by_task["mbpp/608"], "field": "task_id", "overlaps": "mbpp_plus/Mbpp/608"}
    assert by_task["mbpp/704"] == {**by_task["mbpp/704"], "field": "output", "overlaps": "mbpp_test/mbpp/248"}
    stats = results["train"].stats["decontamination"]
    assert stats["n"] == 13 and stats["dropped"] == 127
    assert stats["problems"] == {"humaneval": 164, "mbpp_test": 500, "humaneval_plus": 164, "mbpp_plus": 378}

    from wmtp_jax.data.prepare import humaneval_problems

    humaneval = next(iter(humaneval_problems(assets.HUMANEVAL))).records[0].output  # HumanEval/0
    respaced = "\n".join("  " + line.strip() for line in humaneval.splitlines())  # other indentation: still found
    test_problem = problem("9_Z. Secret", 3, [(PY3, GOOD)], [], description=" ".join(f"w{i}" for i in range(20)))
    extra = write_jsonl(tmp_path / "cc_test.jsonl", [test_problem])
    rows = [
        problem("copy_humaneval", 2, [(PY3, respaced)], []),
        problem("copy_test", 2, [(PY3, GOOD)], [], description="Intro. " + test_problem["description"]),
        problem("clean", 2, [(PY3, GOOD)], []),
    ]
    src = write_jsonl(tmp_path / "cc_train.jsonl", rows)
    (result,) = prepare("codecontests", tmp_path / "cc", [str(src)], decontaminate_against=[str(extra)])
    assert result.n_records == 1
    assert result.report["filtered_by_reason"] == {"contaminated:cc_test.jsonl": 1, "contaminated:humaneval": 1}
    overlaps = {e["task_id"]: e["overlaps"] for e in result.report["contaminated"]}
    assert overlaps == {"copy_humaneval": "humaneval/HumanEval/0", "copy_test": "cc_test.jsonl/9_Z. Secret"}
    (kept,) = prepare("codecontests", tmp_path / "cc_all", [str(src)], decontaminate=False)
    assert kept.n_records == 3


def test_prepared_data_is_reused_only_for_the_same_inputs_options_and_code(tmp_path, capsys):
    from wmtp_jax.data.prepare import CACHE_KEY_FILE, prepare_cached

    src = write_jsonl(tmp_path / "train.jsonl", [problem("a", 2, [(PY3, GOOD)], [])])
    out = tmp_path / "prepared"
    assert prepare_cached("codecontests", out, [str(src)], max_length=512) is True
    assert prepare_cached("codecontests", out, [str(src)], max_length=512) is False
    assert "reusing" in capsys.readouterr().out
    assert prepare_cached("codecontests", out, [str(src)], max_length=256) is True  # other options
    assert "made from different options" in capsys.readouterr().out
    write_jsonl(src, [problem("a", 2, [(PY3, GOOD)], []), problem("b", 2, [(PY3, GOOD)], [])])
    assert prepare_cached("codecontests", out, [str(src)], max_length=256) is True  # the input changed
    assert "made from different inputs" in capsys.readouterr().out
    assert RecordIndex.load(out / "train.index.npz").n_problems == 2
    key = json.loads((out / CACHE_KEY_FILE).read_text())
    assert set(key) == {"source", "inputs", "tokenizer", "options", "code"} and key["options"]["max_length"] == 256
