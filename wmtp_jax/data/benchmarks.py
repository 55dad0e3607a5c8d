"""MBPP, HumanEval, CodeContests and the synthetic task as problems: the one loader per benchmark.

Evaluation (``eval.run``), rollouts, evaluation during training, data preparation (``data.prepare``: training
records of MBPP / HumanEval, the CodeContests statement and examples) and decontamination all read a benchmark
through this module, so a problem means the same thing everywhere.

Prompt formats (``docs/formulas.md``, "Evaluation"):
  MBPP "3shot": lm-evaluation-harness — task ids 2, 3, 4 as examples, "You are an expert Python programmer, and
    here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n", examples end with
    "{code}\\n[DONE]" and are joined by a blank line; stop at "[DONE]".
  MBPP "zeroshot": bigcode-evaluation-harness — the task text and its first test inside a triple-quoted
    docstring; stop at a new top-level statement.
  HumanEval: the prompt itself; program = prompt + completion + test + ``check(entry_point)``.
  HumanEval+ / MBPP+ (``wmtp_jax.data.evalplus``): EvalPlus's own prompts (HumanEval's; MBPP+'s docstring with the
    task and one assert), program = prompt + completion, judged on the canonical solution's outputs for every
    base and plus input (``Problem.differential``).
  CodeContests: the statement and an instruction to read stdin / write stdout; every public, private and
    generated test must print the expected output. Read from the published parquet shards (or JSONL with the
    same fields); the production default is the test split, and results from the shipped 30-problem sample
    (train split, public tests only) are labelled "train-split smoke set".

Bad rows: by default a loader raises ``BenchmarkError`` naming the file, line and field; given a ``skipped``
list it appends ``(location, reason)`` instead and goes on (data preparation counts them in its report).
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from wmtp_jax.data import assets, evalplus, synthetic
from wmtp_jax.data.records import CODECONTESTS_EXAMPLES, codecontests_input, format_prompt
from wmtp_jax.data.rows import read_rows

BENCHMARKS = ("mbpp", "humaneval", "codecontests", "synthetic", "humaneval_plus", "mbpp_plus")
VALIDATION_BENCHMARKS = ("mbpp", "synthetic")  # with a validation split (evaluation inside training)
ALPACA_STOP = ("\n### ",)  # a completion of an Alpaca-format prompt ends before the next section
MBPP_FORMATS = ("3shot", "zeroshot")
MBPP_FEWSHOT_IDS = (2, 3, 4)
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_ZEROSHOT_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
CODECONTESTS_STOP = ("\n```",)


class BenchmarkError(ValueError):
    """A benchmark row that cannot be used: ``location`` ("file:line" or "file:row N") and ``reason``
    ("missing_field: name", "wrong_type: task_id is str", ...)."""

    def __init__(self, location: str, reason: str):
        super().__init__(f"{location}: {reason}")
        self.location, self.reason = location, reason


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    prompt / stop: what the model sees and where its completion ends; prefix: source placed before the
    completion in the program (HumanEval: the prompt); tests: assert-style code run after it, or
    stdio: ``((stdin, expected stdout), ...)``; differential: EvalPlus's input lists, judged against the canonical
    solution's outputs (HumanEval+, MBPP+); reference: a known-good completion (None if the data has none);
    instruction / input: the problem as an Alpaca record (for rollouts, same format as data preparation);
    test_fields: the tests in the dataset's own fields (training records keep them as ``metadata.tests``);
    location: where the problem was read ("file:line").
    """

    benchmark: str
    task_id: str
    prompt: str
    stop: tuple[str, ...]
    prefix: str = ""
    tests: str = ""
    stdio: tuple[tuple[str, str], ...] = ()
    differential: evalplus.DifferentialTests | None = dataclasses.field(default=None, compare=False)
    reference: str | None = None
    instruction: str = ""
    input: str = ""
    alpaca: bool = False  # the prompt is an Alpaca prompt and the completion a whole program (no prefix)
    test_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    location: str = dataclasses.field(default="", compare=False)

    @property
    def alpaca_prompt(self) -> str:
        return format_prompt(self.instruction, self.input)


# ------------------------------------------------------------------------------------------------ rows
def require(row: dict, fields: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    """Raises BenchmarkError ("missing_field: K" / "wrong_type: K is T") for the first field of ``fields`` that
    ``row`` lacks or holds with another type (a bool is not an int)."""
    for key, types in fields.items():
        value = row.get(key)
        allowed = types if isinstance(types, tuple) else (types,)
        if value is None:
            raise BenchmarkError(where, f"missing_field: {key}")
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise BenchmarkError(where, f"wrong_type: {key} is {type(value).__name__}")


def _rows(path: Path, skipped: list[tuple[str, str]] | None) -> Iterator[tuple[str, dict]]:
    """``("file:line", object)`` of each usable row; an unreadable one raises BenchmarkError, or is appended to
    ``skipped`` when a list is given."""
    for location, obj, reason in read_rows(Path(path)):
        if obj is None:
            _skip(BenchmarkError(location, reason), skipped)
        else:
            yield location, obj


def _skip(error: BenchmarkError, skipped: list[tuple[str, str]] | None) -> None:
    if skipped is None:
        raise error
    skipped.append((error.location, error.reason))


# ------------------------------------------------------------------------------------------------ loaders
def _mbpp_block(row: dict) -> str:
    return (
        f"You are an expert Python programmer, and here is your task: {row['text']} Your code should pass "
        f"these tests:\n\n" + "\n".join(row["test_list"]) + "\n[BEGIN]\n"
    )


MBPP_FIELDS = {"task_id": int, "text": str, "code": str, "test_list": list}


def load_mbpp(
    path: str | Path = assets.MBPP,
    *,
    split: str = "test",
    prompt_format: str = "3shot",
    skipped: list[tuple[str, str]] | None = None,
) -> list[Problem]:
    """MBPP problems of ``split`` (test = task ids 11-510; ``MBPP_SPLITS``) in ``prompt_format`` ("3shot" needs
    the few-shot tasks 2, 3, 4 in the file), sorted by task id.

    Raises:
      ValueError: unknown ``prompt_format`` or ``split``.
      BenchmarkError: a bad row or a repeated task id (unless ``skipped`` is given)."""
    if prompt_format not in MBPP_FORMATS:
        raise ValueError(f"MBPP prompt_format={prompt_format!r}: expected one of {list(MBPP_FORMATS)}")
    if split not in MBPP_SPLITS:
        raise ValueError(f"MBPP split={split!r}: expected one of {list(MBPP_SPLITS)}")
    rows: dict[int, tuple[str, dict]] = {}
    for where, row in _rows(Path(path), skipped):
        try:
            require(row, MBPP_FIELDS, where)
            if row["task_id"] in rows:
                raise BenchmarkError(where, f"duplicate_task_id: {row['task_id']} (first at {rows[row['task_id']][0]})")
        except BenchmarkError as e:
            _skip(e, skipped)
            continue
        rows[row["task_id"]] = (where, row)
    shots = ""
    if prompt_format == "3shot":
        missing = [i for i in MBPP_FEWSHOT_IDS if i not in rows]
        if missing:
            raise BenchmarkError(str(path), f"missing_field: the 3-shot prompt needs task ids {missing}")
        shots = "\n\n".join(
            _mbpp_block(rows[i][1]) + rows[i][1]["code"].replace("\r\n", "\n") + "\n[DONE]" for i in MBPP_FEWSHOT_IDS
        )
        shots += "\n\n"
    lo, hi = MBPP_SPLITS[split]
    problems = []
    for task_id in sorted(i for i in rows if lo <= i <= hi):
        where, row = rows[task_id]
        tests = "\n".join(row["test_list"])
        setup = row.get("test_setup_code") or ""  # may use the solution's definitions (task 367): after the code
        if prompt_format == "3shot":
            prompt, stop = shots + _mbpp_block(row), ("[DONE]",)
        else:
            prompt, stop = (
                f'"""\n{row["text"]}\n{row["test_list"][0] if row["test_list"] else ""}\n"""\n',
                (MBPP_ZEROSHOT_STOP),
            )
        problems.append(
            Problem(
                "mbpp",
                f"mbpp/{task_id}",
                prompt,
                stop,
                tests=f"{setup}\n{tests}" if setup else tests,
                reference=row["code"].replace("\r\n", "\n"),
                instruction=row["text"],
                input=tests,
                test_fields={
                    "test_list": row["test_list"],
                    "test_setup_code": row.get("test_setup_code", ""),
                    "challenge_test_list": row.get("challenge_test_list", []),
                },
                location=where,
            )
        )
    return problems


HUMANEVAL_FIELDS = dict.fromkeys(("task_id", "prompt", "canonical_solution", "test", "entry_point"), str)


def load_humaneval(
    path: str | Path = assets.HUMANEVAL, *, skipped: list[tuple[str, str]] | None = None
) -> list[Problem]:
    """The 164 HumanEval problems in file order; reference = the canonical solution.

    Raises:
      BenchmarkError: a bad row (unless ``skipped`` is given)."""
    problems = []
    for where, row in _rows(Path(path), skipped):
        try:
            require(row, HUMANEVAL_FIELDS, where)
        except BenchmarkError as e:
            _skip(e, skipped)
            continue
        problems.append(
            Problem(
                "humaneval",
                row["task_id"],
                row["prompt"],
                HUMANEVAL_STOP,
                prefix=row["prompt"],
                tests=f"{row['test']}\ncheck({row['entry_point']})",
                reference=row["canonical_solution"],
                instruction="Complete the following Python function.",
                input=row["prompt"],
                test_fields={"test": row["test"], "entry_point": row["entry_point"]},
                location=where,
            )
        )
    return problems


def _load_plus(benchmark: str, path: Path, skipped: list[tuple[str, str]] | None) -> list[Problem]:
    dataset = benchmark.removesuffix("_plus")
    data_hash = evalplus.file_hash(path)
    problems, seen = [], {}
    for where, row in _rows(path, skipped):
        try:
            require(row, evalplus.FIELDS, where)
            if row["task_id"] in seen:
                raise BenchmarkError(where, f"duplicate_task_id: {row['task_id']} (first at {seen[row['task_id']]})")
            base, plus = row["base_input"], row["plus_input"] or []
            if dataset == "mbpp":
                base, plus = (evalplus.mbpp_plus_arguments(row["task_id"], inputs) for inputs in (base, plus))
            if not isinstance(plus, list) or not all(isinstance(args, list | tuple) for args in (*base, *plus)):
                raise BenchmarkError(where, "wrong_type: every input must be a list of arguments")
        except BenchmarkError as e:
            _skip(e, skipped)
            continue
        except (ValueError, TypeError, IndexError, AttributeError) as e:  # an input the conversion cannot take
            _skip(BenchmarkError(where, f"bad_inputs: {type(e).__name__}: {e}"), skipped)
            continue
        seen[row["task_id"]] = where
        prompt = row["prompt"]
        humaneval = dataset == "humaneval"
        problems.append(
            Problem(
                benchmark,
                row["task_id"],
                prompt,
                HUMANEVAL_STOP if humaneval else MBPP_ZEROSHOT_STOP,
                prefix=prompt,
                differential=evalplus.DifferentialTests(
                    dataset, row["entry_point"], prompt + row["canonical_solution"], base, plus, row["atol"], data_hash
                ),
                reference=row["canonical_solution"],
                instruction="Complete the following Python function." if humaneval else prompt.strip().strip('"'),
                input=prompt if humaneval else "",
                test_fields={"entry_point": row["entry_point"], "test": row.get("test") or row.get("assertion", "")},
                location=where,
            )
        )
    return problems


def load_humaneval_plus(
    path: str | Path = assets.HUMANEVAL_PLUS, *, skipped: list[tuple[str, str]] | None = None
) -> list[Problem]:
    """The 164 HumanEval+ problems in file order (reference = the canonical solution).

    Raises:
      BenchmarkError: a bad row (a missing / mistyped field, a repeated task id, an input that is not a list of
        arguments), unless ``skipped`` is given."""
    return _load_plus("humaneval_plus", Path(path), skipped)


def load_mbpp_plus(
    path: str | Path = assets.MBPP_PLUS, *, skipped: list[tuple[str, str]] | None = None
) -> list[Problem]:
    """The 378 MBPP+ problems in file order, arguments converted as EvalPlus converts them
    (``evalplus.MBPP_PLUS_ARGUMENT_TYPES``).

    Raises:
      BenchmarkError: as ``load_humaneval_plus``."""
    return _load_plus("mbpp_plus", Path(path), skipped)


CODECONTESTS_SMOKE = "train-split smoke set"
CODECONTESTS_HINT = (
    "download the test split's parquet shards of DeepMind CodeContests (Hugging Face deepmind/code_contests, "
    "data/test-*.parquet) there, or set eval.codecontests to the files (parquet or JSONL; globs allowed)"
)
CODECONTESTS_TESTS = ("public_tests", "private_tests", "generated_tests")


def codecontests_files(patterns: Sequence[str | Path]) -> list[Path]:
    """The files of ``patterns`` (paths or globs), in order.

    Raises:
      BenchmarkError: a pattern matches no file (the message names it and where to get the data)."""
    files = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * Path(pattern).is_file()
        if not matches:
            raise BenchmarkError(pattern, f"no CodeContests file matches it; {CODECONTESTS_HINT}")
        files += map(Path, matches)
    return files


def codecontests_split(files: Sequence[Path]) -> str:
    """What the files are: "train-split smoke set" for the shipped sample, else the split(s) their names give
    ("test", "valid", "train"; "unknown" for a name without one), comma-separated."""
    splits = []
    for f in files:
        if f.resolve() == assets.CODECONTESTS_SAMPLE:
            name = CODECONTESTS_SMOKE
        else:
            name = next((s for s in ("test", "valid", "train") if s in f.name.lower()), "unknown")
        if name not in splits:
            splits.append(name)
    return ", ".join(splits)


def codecontests_problem(where: str, row: dict, examples: int = CODECONTESTS_EXAMPLES) -> Problem:
    """One CodeContests row (the dataset's field names) as a problem: its statement, every public, private and
    generated stdin/stdout test, and (Alpaca input) up to ``examples`` public tests as worked examples.

    Raises:
      BenchmarkError: ``name`` / ``description`` missing or not text, or a test group with unequal numbers of
        inputs and outputs."""
    require(row, {"name": str, "description": str}, where)
    stdio = []
    for key in CODECONTESTS_TESTS:
        tests = row.get(key) or {}
        inputs, outputs = (tests.get("input") or [], tests.get("output") or []) if isinstance(tests, dict) else ([], [])
        if len(inputs) != len(outputs) or not all(isinstance(t, str) for t in (*inputs, *outputs)):
            raise BenchmarkError(where, f"malformed_tests: {key} needs as many text inputs as outputs")
        stdio += zip(inputs, outputs)
    prompt = (
        "Solve the following competitive programming problem in Python 3. Read the input from standard input "
        f"and print the answer to standard output.\n\n{row['description']}\n\n```python\n"
    )
    return Problem(
        "codecontests",
        row["name"],
        prompt,
        CODECONTESTS_STOP,
        stdio=tuple(stdio),
        instruction=row["description"],
        input=codecontests_input(row.get("public_tests"), examples),
        location=where,
    )


def load_codecontests(
    paths: Sequence[str | Path] = (assets.CODECONTESTS_SAMPLE,), *, skipped: list[tuple[str, str]] | None = None
) -> list[Problem]:
    """CodeContests problems with at least one stdin/stdout test, from parquet shards or JSONL files with the
    dataset's field names (``paths`` may be globs).

    Raises:
      BenchmarkError: a path matches nothing, or a bad row (``codecontests_problem``; unless ``skipped`` is
        given)."""
    problems = []
    for path in codecontests_files(paths):
        for where, row in _rows(path, skipped):
            try:
                problem = codecontests_problem(where, row)
            except BenchmarkError as e:
                _skip(e, skipped)
                continue
            if problem.stdio:
                problems.append(problem)
    return problems


def load_synthetic(split: str = "test") -> list[Problem]:
    """The synthetic task (``wmtp_jax.data.synthetic``) in the Alpaca format it is trained on; the held-out
    ``test`` split has constants no training instance has."""

    return [
        Problem(
            "synthetic",
            inst.task_id,
            format_prompt(inst.instruction),
            ALPACA_STOP,
            tests="\n".join(inst.tests),
            reference=inst.solution,
            instruction=inst.instruction,
            alpaca=True,
            test_fields={"test_list": list(inst.tests)},
        )
        for inst in synthetic.instances(split)
    ]


def load(
    benchmark: str,
    *,
    mbpp_format: str = "3shot",
    mbpp_split: str = "test",
    codecontests_paths: Sequence[str] = (),
    synthetic_split: str = "test",
) -> list[Problem]:
    """Benchmark ``benchmark`` (one of ``BENCHMARKS``); raises ValueError for another name."""
    if benchmark == "mbpp":
        return load_mbpp(split=mbpp_split, prompt_format=mbpp_format)
    if benchmark == "humaneval":
        return load_humaneval()
    if benchmark == "codecontests":
        return load_codecontests(codecontests_paths or (assets.CODECONTESTS_SAMPLE,))
    if benchmark == "synthetic":
        return load_synthetic(synthetic_split)
    if benchmark == "humaneval_plus":
        return load_humaneval_plus()
    if benchmark == "mbpp_plus":
        return load_mbpp_plus()
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {list(BENCHMARKS)}")


def dataset_label(name: str, e, split: str = "test") -> str:
    """What a benchmark of eval section ``e`` is evaluated on, for results.json and reports: e.g. "MBPP test
    split", "CodeContests test split", "CodeContests train-split smoke set"."""
    if name == "codecontests":
        what = codecontests_split(codecontests_files(tuple(e.codecontests) or (assets.CODECONTESTS_SAMPLE,)))
        return f"CodeContests {what}" + ("" if what == CODECONTESTS_SMOKE else " split")
    if name == "humaneval":
        return "HumanEval"
    if name in evalplus.VERSIONS:
        return evalplus.VERSIONS[name]
    return f"{'MBPP' if name == 'mbpp' else name} {split} split"


def load_for(name: str, e, split: str = "test") -> list[Problem]:
    """Benchmark ``name`` as an eval config section ``e`` asks for it (MBPP format, CodeContests files), from
    ``split`` (MBPP and synthetic; the others have one evaluation split: MBPP+ spans MBPP's splits, as published)."""
    return load(
        name,
        mbpp_format=e.mbpp_format,
        mbpp_split=split,
        synthetic_split=split,
        codecontests_paths=tuple(e.codecontests),
    )
