"""Raw public datasets -> Alpaca JSONL + compact index + stats + report, per split.

Sources (``docs/formulas.md``, "Data"):
  codecontests  DeepMind CodeContests, Hugging Face parquet shards or JSONL with the original field names;
                one record per Python solution (language 1 = Python 2, 3 = Python 3) from ``solutions``
                (is_correct) and ``incorrect_solutions``; the split comes from the file name
                (train / valid / test) unless given.
  mbpp          task-id splits: 1-10 prompt, 11-510 test, 511-600 validation, 601-974 train; the reference
                code is a correct solution; tests are kept in ``metadata.tests``.
  humaneval     164 problems, split "test" (evaluation only); canonical solution as output.
  alpaca        Alpaca JSONL already in the record format (rollouts, the shipped labelled MBPP set).

Bad input never stops the run: malformed JSON, non-UTF-8 bytes, missing or wrong-typed fields, empty
solutions and unknown language codes are skipped, counted by reason and listed (file, line/row, reason) in
``{split}.report.json``. Non-Python solutions and records longer than ``max_length`` tokens are filtered
and counted. Every output is written to a temporary name and renamed at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wmtp_jax.data import assets, benchmarks, synthetic
from wmtp_jax.data.decontaminate import DEFAULT_N, Decontaminator
from wmtp_jax.data.records import CODECONTESTS_EXAMPLES, AlpacaRecord, IndexBuilder, format_prompt
from wmtp_jax.data.rows import read_rows
from wmtp_jax.data.synthetic import SPLITS
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.files import atomic_write_text

PYTHON_LANGUAGES = {1: "python2", 3: "python3"}
OTHER_LANGUAGES = {2: "cpp", 4: "java"}
LENGTH_BINS = [0, 128, 256, 512, 1024, 2048, 4096, 8192, 2**31]
TRAINING_SPLITS = ("train", "validation")  # decontaminated by default (CodeContests "valid" is an evaluation split)


class NothingUsable(RuntimeError):
    """No usable record came out of the inputs."""


@dataclasses.dataclass
class RecordGroup:
    """The candidate training records of one source problem (one row), or the reasons it was skipped."""

    location: str  # "file:line" or "file:row N"
    problem_id: str = ""
    difficulty: int = 0
    records: list[AlpacaRecord] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (location, reason)
    filtered: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class SplitResult:
    split: str
    n_records: int
    stats: dict[str, Any]
    report: dict[str, Any]


def _field(obj: dict, name: str, types, problem: RecordGroup) -> Any:
    """``obj[name]`` if present with one of ``types``; otherwise records the reason and returns None."""
    if name not in obj or obj[name] is None:
        problem.skipped.append((problem.location, f"missing_field: {name}"))
        return None
    if (
        not isinstance(obj[name], types)
        or isinstance(obj[name], bool)
        and bool not in (types if isinstance(types, tuple) else (types,))
    ):
        problem.skipped.append((problem.location, f"wrong_type: {name} is {type(obj[name]).__name__}"))
        return None
    return obj[name]


def _clean_code(code: str) -> str:
    return code.replace("\r\n", "\n")


# --------------------------------------------------------------------------------------------- sources
def codecontests_problem(location: str, obj: dict, examples: int = CODECONTESTS_EXAMPLES) -> RecordGroup:
    """One CodeContests row -> records for its Python solutions (correct and incorrect). The statement, tests and
    Alpaca input (up to ``examples`` public tests) come from ``benchmarks.codecontests_problem``, as evaluation
    reads them; a row it refuses is skipped with its reason."""
    p = RecordGroup(location)
    try:
        problem = benchmarks.codecontests_problem(location, obj, examples)
    except benchmarks.BenchmarkError as e:
        p.skipped.append((e.location, e.reason))
        return p
    difficulty = _field(obj, "difficulty", int, p)
    source = obj.get("source", 0)
    groups = {key: _field(obj, key, dict, p) for key in ("solutions", "incorrect_solutions")}
    if p.skipped:
        return p
    p.problem_id, p.difficulty = problem.task_id, difficulty
    for key, group in groups.items():
        languages, solutions = group.get("language"), group.get("solution")
        if not isinstance(languages, list) or not isinstance(solutions, list) or len(languages) != len(solutions):
            p.skipped.append((location, f"wrong_type: {key} must hold equal-length 'language' and 'solution' lists"))
            continue
        for j, (lang, code) in enumerate(zip(languages, solutions)):
            where = f"{location} {key}[{j}]"
            if isinstance(lang, bool) or not isinstance(lang, int) or lang not in (*PYTHON_LANGUAGES, *OTHER_LANGUAGES):
                p.skipped.append((where, f"unknown_language: {lang!r}"))
            elif lang in OTHER_LANGUAGES:
                p.filtered[f"not_python:{OTHER_LANGUAGES[lang]}"] += 1
            elif not isinstance(code, str):
                p.skipped.append((where, f"wrong_type: solution is {type(code).__name__}"))
            elif not code.strip():
                p.skipped.append((where, "empty_solution"))
            else:
                p.records.append(
                    AlpacaRecord(
                        instruction=problem.instruction,
                        input=problem.input,
                        output=_clean_code(code),
                        task_id=problem.task_id,
                        is_correct=key == "solutions",
                        metadata={
                            "source": "codecontests",
                            "difficulty": difficulty,
                            "has_tests": bool(problem.stdio),
                            "language": PYTHON_LANGUAGES[lang],
                            "cc_source": source,
                        },
                    )
                )
    return p


def codecontests_problems(paths: Iterable[Path], examples: int = CODECONTESTS_EXAMPLES) -> Iterator[RecordGroup]:
    for path in paths:
        for loc, obj, reason in read_rows(Path(path)):
            yield RecordGroup(loc, skipped=[(loc, reason)]) if obj is None else codecontests_problem(loc, obj, examples)


def _benchmark_groups(problems: list[benchmarks.Problem], skipped: list[tuple[str, str]]) -> Iterator[RecordGroup]:
    """The training records of benchmark problems (read by ``data.benchmarks``, the one loader per benchmark):
    the reference solution as output, the dataset's tests as ``metadata.tests``; a problem without a reference
    solution is skipped as ``empty_solution``, and rows the loader refused come first, with their reasons."""
    for location, reason in skipped:
        yield RecordGroup(location, skipped=[(location, reason)])
    for problem in problems:
        group = RecordGroup(problem.location, problem.task_id)
        if not (problem.reference or "").strip():
            group.skipped.append((problem.location, "empty_solution"))
        else:
            group.records.append(
                AlpacaRecord(
                    instruction=problem.instruction,
                    input=problem.input,
                    output=problem.prefix + problem.reference,  # HumanEval: prompt + canonical solution
                    task_id=problem.task_id,
                    is_correct=True,
                    metadata={
                        "source": problem.benchmark,
                        "difficulty": 0,
                        "has_tests": bool(problem.tests),
                        "tests": dict(problem.test_fields),
                    },
                )
            )
        yield group


def mbpp_problems(path: Path, split: str) -> Iterator[RecordGroup]:
    skipped: list[tuple[str, str]] = []
    problems = benchmarks.load_mbpp(path, split=split, prompt_format="zeroshot", skipped=skipped)
    return _benchmark_groups(problems, skipped)


def synthetic_problems(split: str) -> Iterator[RecordGroup]:
    """The synthetic task (``wmtp_jax.data.synthetic``): one correct record per instance, plus its incorrect
    solution in the train split (for the critic)."""

    for inst in synthetic.instances(split):
        p = RecordGroup(inst.task_id, problem_id=inst.task_id)
        solutions = [(inst.solution, True)] + ([(inst.wrong_solution, False)] if split == "train" else [])
        for output, correct in solutions:
            p.records.append(
                AlpacaRecord(
                    instruction=inst.instruction,
                    input="",
                    output=output,
                    task_id=inst.task_id,
                    is_correct=correct,
                    metadata={
                        "source": "synthetic",
                        "difficulty": 0,
                        "has_tests": True,
                        "tests": {"test_list": list(inst.tests)},
                    },
                )
            )
        yield p


ALPACA_FIELDS = {"instruction": str, "input": str, "output": str, "task_id": str, "is_correct": bool, "metadata": dict}


def alpaca_problems(paths: Iterable[Path]) -> Iterator[RecordGroup]:
    """Alpaca JSONL already in the record format (rollouts, labelled sets), regrouped by task_id."""
    groups: dict[str, RecordGroup] = {}
    for path in paths:
        for loc, obj, reason in read_rows(Path(path)):
            if obj is None:
                yield RecordGroup(loc, skipped=[(loc, reason)])
                continue
            p = RecordGroup(loc)
            fields = {k: _field(obj, k, t, p) for k, t in ALPACA_FIELDS.items()}
            if not p.skipped and not fields["output"].strip():
                p.skipped.append((loc, "empty_solution"))
            if p.skipped:
                yield p
                continue
            difficulty = fields["metadata"].get("difficulty", 0)
            group = groups.setdefault(
                fields["task_id"], RecordGroup(loc, fields["task_id"], difficulty if isinstance(difficulty, int) else 0)
            )
            group.records.append(AlpacaRecord(**fields))
    yield from groups.values()


def humaneval_problems(path: Path) -> Iterator[RecordGroup]:
    skipped: list[tuple[str, str]] = []
    return _benchmark_groups(benchmarks.load_humaneval(path, skipped=skipped), skipped)


# --------------------------------------------------------------------------------------------- writing
def evaluation_problems(extra_files: Iterable[str | Path] = ()) -> Iterator[tuple[str, str, str]]:
    """The default evaluation sets as ``(benchmark, task_id, text)``: HumanEval, the MBPP test split, HumanEval+
    and MBPP+ (the same problems as the originals with more tests, but MBPP+ takes its 378 tasks from every MBPP
    split: its train- and validation-split tasks are evaluation problems too), and every problem of
    ``extra_files`` (CodeContests parquet / JSONL with original field names, or Alpaca JSONL)."""
    for problem in benchmarks.load_humaneval():
        yield "humaneval", problem.task_id, problem.prompt + problem.reference  # docstring + canonical solution
    for problem in benchmarks.load_mbpp(split="test", prompt_format="zeroshot"):
        yield "mbpp_test", problem.task_id, problem.instruction
        yield "mbpp_test", problem.task_id, problem.reference
    for problem in (*benchmarks.load_humaneval_plus(), *benchmarks.load_mbpp_plus()):
        yield problem.benchmark, problem.task_id, problem.prompt  # HumanEval+: docstring; MBPP+: task and an assert
        yield problem.benchmark, problem.task_id, problem.reference
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


def token_length(tok: Tokenizer, record: AlpacaRecord, prompt_ids: list[int] | None = None) -> int:
    """BOS + prompt tokens + output tokens + EOS (the length the trainer sees)."""
    prompt_ids = (
        prompt_ids if prompt_ids is not None else tok.encode(format_prompt(record.instruction, record.input), bos=True)
    )
    return len(prompt_ids) + len(tok.encode(record.output)) + 1


def data_sha256(jsonl: str | Path) -> str:
    """The SHA-256 of a prepared ``{split}.jsonl``: from its ``{split}.stats.json`` when preparation recorded it,
    else computed."""
    jsonl = Path(jsonl)
    stats = jsonl.with_name(jsonl.name.removesuffix(".jsonl") + ".stats.json")
    if stats.is_file():
        recorded = json.loads(stats.read_text()).get("sha256", {}).get("outputs", {}).get(jsonl.name)
        if recorded:
            return recorded
    return _sha256(jsonl)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_split(
    problems: Iterable[RecordGroup],
    out_dir: str | os.PathLike,
    split: str,
    inputs: list[Path],
    tokenizer: Tokenizer,
    max_length: int,
    progress: bool = False,
    decontaminator: Decontaminator | None = None,
) -> SplitResult:
    """Writes ``{split}.jsonl``, ``{split}.index.npz``, ``{split}.stats.json`` and ``{split}.report.json``.

    ``decontaminator``: records overlapping an evaluation problem are dropped, counted as
    ``contaminated:{benchmark}`` and listed with the problem they overlap. All four files are written under
    temporary names and renamed only after everything succeeded.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = {k: out_dir / f"{split}.{k}" for k in ("jsonl", "index.npz", "stats.json", "report.json")}
    tmp = {k: v.with_name(f".{v.name}.tmp") for k, v in final.items()}
    builder, skipped, filtered = IndexBuilder(), [], collections.Counter()
    counts = collections.Counter()
    lengths, contaminated = [], []
    try:
        with open(tmp["jsonl"], "wb") as out:
            for problem in tqdm(problems, desc=f"prepare {split}", unit="problem", disable=not progress):
                skipped += problem.skipped
                filtered += problem.filtered
                prompt_cache: dict[tuple[str, str], list[int]] = {}
                hits = decontaminator.check(problem.records) if decontaminator is not None else None
                for j, rec in enumerate(problem.records):
                    if hits is not None and (hit := hits[j]):
                        filtered[hit.reason] += 1
                        where = {"location": problem.location, "task_id": rec.task_id, "field": hit.field}
                        contaminated.append({**where, "overlaps": f"{hit.benchmark}/{hit.task_id}"})
                        continue
                    key = (rec.instruction, rec.input)
                    if key not in prompt_cache:
                        prompt_cache[key] = tokenizer.encode(format_prompt(*key), bos=True)
                    n_tokens = token_length(tokenizer, rec, prompt_cache[key])
                    if n_tokens > max_length:
                        filtered["too_long"] += 1
                        continue
                    builder.add(out.tell(), rec.is_correct, n_tokens, problem.problem_id, problem.difficulty)
                    out.write(json.dumps(rec.to_json_dict(), ensure_ascii=False).encode("utf-8") + b"\n")
                    counts[("correct" if rec.is_correct else "incorrect", problem.difficulty)] += 1
                    lengths.append(n_tokens)
        index = builder.build()
        index.save(tmp["index.npz"])
        reasons = collections.Counter(reason.split(":")[0] for _, reason in skipped)
        report = {
            "split": split,
            "skipped_total": len(skipped),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "filtered_by_reason": dict(sorted(filtered.items())),
            "skipped": [{"location": loc, "reason": reason} for loc, reason in skipped],
            "contaminated": contaminated,
        }
        hist, _ = np.histogram(np.asarray(lengths, np.int64), bins=LENGTH_BINS)
        stats = {
            "split": split,
            "records": len(index),
            "problems": index.n_problems,
            "correct": int(index.is_correct.sum()),
            "incorrect": int((~index.is_correct).sum()),
            "by_correctness_and_difficulty": {f"{c}/difficulty={d}": n for (c, d), n in sorted(counts.items())},
            "token_length": {
                "max_length": max_length,
                "histogram": {f"[{lo}, {hi})": int(n) for lo, hi, n in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:], hist)},
                "mean": float(np.mean(lengths)) if lengths else 0.0,
            },
            "skipped": len(skipped),
            "filtered": dict(sorted(filtered.items())),
            "decontamination": (
                {**decontaminator.describe(), "dropped": len(contaminated)} if decontaminator is not None else None
            ),
            "sha256": {
                "inputs": {str(p): _sha256(Path(p)) for p in inputs},
                "outputs": {
                    final["jsonl"].name: _sha256(tmp["jsonl"]),
                    final["index.npz"].name: _sha256(tmp["index.npz"]),
                },
            },
        }
        tmp["stats.json"].write_text(json.dumps(stats, indent=2) + "\n")
        tmp["report.json"].write_text(json.dumps(report, indent=2) + "\n")
        for key in ("jsonl", "index.npz", "report.json", "stats.json"):
            os.replace(tmp[key], final[key])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return SplitResult(split, len(index), stats, report)


def split_of(path: Path) -> str:
    """CodeContests split from a file name: ``train-00000-of-00039.parquet`` -> "train"."""
    name = path.name.lower()
    for split in ("train", "valid", "test"):
        if split in name:
            return split
    raise ValueError(
        f"{path}: cannot tell the split from the file name (expected train / valid / test in it); pass --split"
    )


def prepare(
    source: str,
    out_dir,
    inputs: list[str] | None = None,
    *,
    split: str | None = None,
    max_length: int = 2048,
    tokenizer: Tokenizer | None = None,
    progress: bool = False,
    decontaminate: bool = True,
    decontaminate_against: Iterable[str | Path] = (),
    ngram: int = DEFAULT_N,
    codecontests_examples: int = CODECONTESTS_EXAMPLES,
) -> list[SplitResult]:
    """Prepares every split of ``source``; raises NothingUsable when no split kept a record.

    ``decontaminate`` (default on): the training splits (``TRAINING_SPLITS``: CodeContests train, MBPP train and
    validation, Alpaca) drop records sharing an ``ngram``-gram with HumanEval, the MBPP test split,
    ``decontaminate_against`` files and, for CodeContests, the valid / test shards among ``inputs``
    (``wmtp_jax.data.decontaminate``). Evaluation splits are never filtered. ``codecontests_examples``: public tests
    shown in a CodeContests record's input (``records.codecontests_input``; 0 = none)."""
    tokenizer = tokenizer or Tokenizer()
    results = []
    index: list[Decontaminator] = []
    decontaminate_against = list(decontaminate_against)

    def write(problems, name, paths):
        guard = None
        if decontaminate and name in TRAINING_SPLITS:
            if not index:
                index.append(Decontaminator(evaluation_problems(decontaminate_against), ngram))
            guard = index[0]
        return write_split(problems, out_dir, name, paths, tokenizer, max_length, progress, guard)

    if source == "codecontests":
        if not inputs:
            raise ValueError("--source codecontests needs --input FILE... (parquet shards or JSONL)")
        by_split: dict[str, list[Path]] = collections.defaultdict(list)
        for p in map(Path, inputs):
            by_split[split or split_of(p)].append(p)
        for name, paths in by_split.items():
            if name not in TRAINING_SPLITS:  # the evaluation shards given guard the training split
                decontaminate_against += [p for p in paths if p not in decontaminate_against]
        for name, paths in sorted(by_split.items()):
            results.append(write(codecontests_problems(paths, codecontests_examples), name, paths))
    elif source == "mbpp":
        path = Path(inputs[0]) if inputs else assets.MBPP
        for name in [split] if split else list(benchmarks.MBPP_SPLITS):
            results.append(write(mbpp_problems(path, name), name, [path]))
    elif source == "alpaca":
        if not inputs:
            raise ValueError("--source alpaca needs --input FILE... (Alpaca JSONL)")
        paths = [Path(p) for p in inputs]
        results.append(write(alpaca_problems(paths), split or "train", paths))
    elif source == "humaneval":
        path = Path(inputs[0]) if inputs else assets.HUMANEVAL
        results.append(write(humaneval_problems(path), split or "test", [path]))
    elif source == "synthetic":
        for name in [split] if split else list(SPLITS):
            results.append(write_split(synthetic_problems(name), out_dir, name, [], tokenizer, max_length, progress))
    else:
        raise ValueError(f"source={source!r}: expected codecontests, mbpp, humaneval, alpaca or synthetic")
    if not any(r.n_records for r in results):
        raise NothingUsable(f"no usable record in {inputs or source}; see the *.report.json files in {out_dir}")
    return results


# --------------------------------------------------------------------------------------------- versioned caches

CACHE_KEY_FILE = "cache_key.json"
_CODE = ("prepare.py", "records.py", "synthetic.py", "decontaminate.py")  # the code that shapes prepared records


def cache_key(source: str, inputs: Iterable[str | Path] = (), tokenizer: Tokenizer | None = None, **options) -> dict:
    """What a prepared dataset directory was made from: the source, the SHA-256 of every input file and of the
    tokenizer, the preparation options and the SHA-256 of the preparation code (a change of record format or of the
    synthetic task invalidates the cache)."""
    tokenizer = tokenizer or Tokenizer()
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in _CODE)).hexdigest()
    return {
        "source": source,
        "inputs": {str(p): _sha256(Path(p)) for p in inputs},
        "tokenizer": _sha256(Path(tokenizer.path)),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())},
        "code": code,
    }


def prepare_cached(
    source: str, out_dir, inputs: list[str] | None = None, *, tokenizer: Tokenizer | None = None, **options
) -> bool:
    """``prepare`` into ``out_dir`` unless it already holds data made from the same ``cache_key``; returns True when
    it (re)built. A directory made from other inputs, options, tokenizer or code is rebuilt, and says why."""
    out_dir = Path(out_dir)
    key = cache_key(source, inputs or (), tokenizer, **options)
    path = out_dir / CACHE_KEY_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = {}
        if stored == key:
            print(f"prepared data: reusing {out_dir} (same inputs, options, tokenizer and code)")
            return False
        changed = sorted(k for k in key if stored.get(k) != key[k])
        print(f"prepared data: {out_dir} was made from different {', '.join(changed)}; preparing it again")
    elif out_dir.is_dir() and any(out_dir.glob("*.jsonl")):
        print(f"prepared data: {out_dir} has no {CACHE_KEY_FILE} (made before caches were versioned); preparing again")
    path.unlink(missing_ok=True)
    prepare(source, out_dir, inputs, tokenizer=tokenizer, **options)
    atomic_write_text(path, json.dumps(key, indent=2) + "\n")
    return True
