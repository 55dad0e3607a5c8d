"""MBPP, HumanEval and CodeContests as problems: prompt, stop sequences, tests, and how a completion is judged.

Prompt formats (``docs/formulas.md``, "Evaluation"):
  MBPP "3shot": lm-evaluation-harness — task ids 2, 3, 4 as examples, "You are an expert Python programmer, and
    here is your task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n", examples end with
    "{code}\\n[DONE]" and are joined by a blank line; stop at "[DONE]".
  MBPP "zeroshot": bigcode-evaluation-harness — the task text and its first test inside a triple-quoted
    docstring; stop at a new top-level statement.
  HumanEval: the prompt itself; program = prompt + completion + test + ``check(entry_point)``.
  CodeContests: the statement and an instruction to read stdin / write stdout; every public, private and
    generated test must print the expected output (compared token by token, i.e. after whitespace
    normalisation). Read from the published parquet shards (or JSONL with the same fields); the production
    default is the test split, and results from the shipped 30-problem sample (train split, public tests only)
    are labelled "train-split smoke set".
A completion passes an assert-style benchmark only if the program exits 0 *and* prints a random marker placed
after the tests, so ``sys.exit(0)`` / ``os._exit(0)`` before the tests is a failure.
"""

from __future__ import annotations

import dataclasses
import glob
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from wmtp_jax.data import assets, synthetic
from wmtp_jax.data.prepare import MBPP_SPLITS, read_rows
from wmtp_jax.data.records import codecontests_input, format_prompt
from wmtp_jax.sandbox.execution import STATUSES, ExecutionResult, execute

BENCHMARKS = ("mbpp", "humaneval", "codecontests", "synthetic")
ALPACA_STOP = ("\n### ",)  # a completion of an Alpaca-format prompt ends before the next section
MBPP_FORMATS = ("3shot", "zeroshot")
MBPP_FEWSHOT_IDS = (2, 3, 4)
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
MBPP_ZEROSHOT_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
CODECONTESTS_STOP = ("\n```",)
OUTCOMES = STATUSES  # a completion's outcome is its (first failing) program's status


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read: names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    prompt / stop: what the model sees and where its completion ends; prefix: source placed before the
    completion in the program (HumanEval: the prompt); tests: assert-style code run after it, or
    stdio: ``((stdin, expected stdout), ...)``; reference: a known-good completion (None if the data has none);
    instruction / input: the problem as an Alpaca record (for rollouts, same format as data preparation).
    """

    benchmark: str
    task_id: str
    prompt: str
    stop: tuple[str, ...]
    prefix: str = ""
    tests: str = ""
    stdio: tuple[tuple[str, str], ...] = ()
    reference: str | None = None
    instruction: str = ""
    input: str = ""
    alpaca: bool = False  # the prompt is an Alpaca prompt and the completion a whole program (no prefix)

    @property
    def alpaca_prompt(self) -> str:
        return format_prompt(self.instruction, self.input)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """``status``: passed / failed / timeout / error; ``detail``: the first failing test's stderr tail or a
    wrong-answer note."""

    status: str
    detail: str = ""


# ------------------------------------------------------------------------------------------------ loading
def _rows(path: Path) -> Iterable[tuple[str, dict]]:
    """``("file:line", object)`` of each line, read by ``data.prepare.read_rows`` (the one JSONL / parquet reader);
    a line that is not a JSON object is a BenchmarkError naming the file, the line and why."""
    for location, obj, reason in read_rows(path):
        if obj is None:
            raise BenchmarkError(f"{location}: {reason}")
        yield location, obj


def _get(row: dict, key: str, types, where: str):
    if key not in row or not isinstance(row[key], types):
        raise BenchmarkError(f"{where}: field {key!r} missing or not {types}")
    return row[key]


def _mbpp_block(row: dict) -> str:
    return (
        f"You are an expert Python programmer, and here is your task: {row['text']} Your code should pass "
        f"these tests:\n\n" + "\n".join(row["test_list"]) + "\n[BEGIN]\n"
    )


def load_mbpp(path: str | Path = assets.MBPP, *, split: str = "test", prompt_format: str = "3shot") -> list[Problem]:
    """MBPP problems of ``split`` (test = task ids 11-510) in ``prompt_format`` ("3shot" or "zeroshot")."""
    if prompt_format not in MBPP_FORMATS:
        raise ValueError(f"MBPP prompt_format={prompt_format!r}: expected one of {list(MBPP_FORMATS)}")
    path = Path(path)
    rows = {}
    for where, row in _rows(path):
        task_id = _get(row, "task_id", int, where)
        for key, types in (("text", str), ("code", str), ("test_list", list)):
            _get(row, key, types, where)
        rows[task_id] = row
    lo, hi = MBPP_SPLITS[split]
    shots = (
        "\n\n".join(_mbpp_block(rows[i]) + rows[i]["code"].replace("\r\n", "\n") + "\n[DONE]" for i in MBPP_FEWSHOT_IDS)
        + "\n\n"
    )
    problems = []
    for task_id in sorted(i for i in rows if lo <= i <= hi):
        row = rows[task_id]
        tests = "\n".join(row["test_list"])
        setup = row.get("test_setup_code") or ""  # may use the solution's definitions (task 367): after the code
        if prompt_format == "3shot":
            prompt, stop = shots + _mbpp_block(row), ("[DONE]",)
        else:
            prompt, stop = f'"""\n{row["text"]}\n{row["test_list"][0]}\n"""\n', MBPP_ZEROSHOT_STOP
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
            )
        )
    return problems


def load_humaneval(path: str | Path = assets.HUMANEVAL) -> list[Problem]:
    """The 164 HumanEval problems; reference = the canonical solution."""
    path = Path(path)
    problems = []
    for where, row in _rows(path):
        f = {k: _get(row, k, str, where) for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
        problems.append(
            Problem(
                "humaneval",
                f["task_id"],
                f["prompt"],
                HUMANEVAL_STOP,
                prefix=f["prompt"],
                tests=f"{f['test']}\ncheck({f['entry_point']})",
                reference=f["canonical_solution"],
                instruction="Complete the following Python function.",
                input=f["prompt"],
            )
        )
    return problems


CODECONTESTS_SMOKE = "train-split smoke set"
CODECONTESTS_HINT = (
    "download the test split's parquet shards of DeepMind CodeContests (Hugging Face deepmind/code_contests, "
    "data/test-*.parquet) there, or set eval.codecontests to the files (parquet or JSONL; globs allowed)"
)


def codecontests_files(patterns: Sequence[str | Path]) -> list[Path]:
    """The files of ``patterns`` (paths or globs), in order.

    Raises:
      BenchmarkError: a pattern matches no file (the message names it and where to get the data)."""
    files = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * Path(pattern).is_file()
        if not matches:
            raise BenchmarkError(f"CodeContests: {pattern} matches no file; {CODECONTESTS_HINT}")
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


def load_codecontests(paths: Sequence[str | Path] = (assets.CODECONTESTS_SAMPLE,)) -> list[Problem]:
    """CodeContests problems with at least one stdin/stdout test (public, private and generated), from parquet
    shards or JSONL files with the dataset's field names (``paths`` may be globs). The Alpaca form of a problem
    carries up to two public tests as examples (``records.codecontests_input``), as prepared training data does.

    Raises:
      BenchmarkError: a path matches nothing, a row lacks ``name`` / ``description`` or its tests are malformed
        (file and line / row named)."""
    problems = []
    for path in codecontests_files(paths):
        for where, row, reason in read_rows(path):
            if row is None:
                raise BenchmarkError(f"{where}: {reason}")
            name, description = _get(row, "name", str, where), _get(row, "description", str, where)
            stdio = []
            for key in ("public_tests", "private_tests", "generated_tests"):
                tests = row.get(key) or {}
                inputs, outputs = tests.get("input") or [], tests.get("output") or []
                if len(inputs) != len(outputs):
                    raise BenchmarkError(f"{where}: {key} has {len(inputs)} inputs but {len(outputs)} outputs")
                stdio += zip(inputs, outputs)
            if not stdio:
                continue
            prompt = (
                f"Solve the following competitive programming problem in Python 3. Read the input from "
                f"standard input and print the answer to standard output.\n\n{description}\n\n```python\n"
            )
            problems.append(
                Problem(
                    "codecontests",
                    name,
                    prompt,
                    CODECONTESTS_STOP,
                    stdio=tuple(stdio),
                    instruction=description,
                    input=codecontests_input(row.get("public_tests")),
                )
            )
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
    if benchmark == "mbpp":
        return load_mbpp(split=mbpp_split, prompt_format=mbpp_format)
    if benchmark == "humaneval":
        return load_humaneval()
    if benchmark == "codecontests":
        return load_codecontests(codecontests_paths or (assets.CODECONTESTS_SAMPLE,))
    if benchmark == "synthetic":
        return load_synthetic(synthetic_split)
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {list(BENCHMARKS)}")


def dataset_label(name: str, e, split: str = "test") -> str:
    """What a benchmark of eval section ``e`` is evaluated on, for results.json and reports: e.g. "MBPP test
    split", "CodeContests test split", "CodeContests train-split smoke set"."""
    if name == "codecontests":
        what = codecontests_split(codecontests_files(tuple(e.codecontests) or (assets.CODECONTESTS_SAMPLE,)))
        return f"CodeContests {what}" + ("" if what == CODECONTESTS_SMOKE else " split")
    if name == "humaneval":
        return "HumanEval"
    return f"{'MBPP' if name == 'mbpp' else name} {split} split"


def load_for(name: str, e, split: str = "test") -> list[Problem]:
    """Benchmark ``name`` as an eval config section ``e`` asks for it (MBPP format, CodeContests files), from
    ``split`` (MBPP and synthetic; the others have one evaluation split)."""
    return load(
        name,
        mbpp_format=e.mbpp_format,
        mbpp_split=split,
        synthetic_split=split,
        codecontests_paths=tuple(e.codecontests),
    )


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
