"""HumanEval+ / MBPP+ judging, as EvalPlus judges (Liu et al., NeurIPS 2023, arXiv 2305.01210; ``evalplus`` 0.3.1):
differential testing against the canonical solution.

1. Expected outputs: the canonical solution runs on every base and plus input in a fresh interpreter
   (``_evalplus_canonical.py``), each call timed. The outputs are cached on disk per problem, keyed by the data
   file's sha256 and the Python version, in ``$WMTP_EVALPLUS_CACHE`` or ``~/.cache/wmtp_jax/evalplus`` (all of
   HumanEval+ and MBPP+: about 1 GB, nearly all of it three problems' extreme inputs, and 3 min of one core);
   only the problems asked for are computed, so a small ``eval.limit`` costs seconds. The sandbox reads them
   read-only (``execute(read_only=...)``): programs never receive them through a pipe.
2. Per-input time limits, EvalPlus's calibration: ``max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x canonical time)``;
   the whole program gets ``min(TASK_TIMEOUT_S, sum of its limits) + 3 s``.
3. A completion is judged twice in the sandbox (``_evalplus_driver.py``): on the base inputs and on the plus
   inputs, each run stopping at its first failing input. **base** passes when every base input's output matches;
   **plus** when base and plus both do (EvalPlus's "base + extra tests").

Stdout / stderr of the completion are discarded, ``__name__`` is not ``"__main__"``, stdin is closed: the
semantics of the other assert-style benchmarks (``docs/evaluation.md``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from wmtp_jax.data.benchmarks import Problem
from wmtp_jax.sandbox.execution import ExecutionResult

MIN_TIME_LIMIT_S = 1.0  # EvalPlus's DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # EvalPlus's DEFAULT_GT_TIME_LIMIT_FACTOR
TASK_TIMEOUT_S = 60.0  # EvalPlus's EVALPLUS_TIMEOUT_PER_TASK default
MEMORY_MB = 4096  # EvalPlus's address-space limit (EVALPLUS_MAX_MEMORY_BYTES default): MBPP+ 255's outputs need it
KINDS = ("base", "plus")
LIMITS = {  # results.json's record of the calibration
    "per_input_s": f"max({MIN_TIME_LIMIT_S}, {TIME_LIMIT_FACTOR} x canonical time)",
    "per_run_s": f"min({TASK_TIMEOUT_S}, sum of per-input limits) + 3",
    "memory_mb": MEMORY_MB,
}
# MBPP tasks whose expected outputs are only "is not None" (their outputs are regex match objects)
NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
_HERE = Path(__file__).resolve().parent
DRIVER = (_HERE / "_evalplus_driver.py").read_text()
_CANONICAL = _HERE / "_evalplus_canonical.py"


class CanonicalError(RuntimeError):
    """A canonical solution failed on its own inputs (the data file is not the published one, or this Python
    differs); the message names the problem and its location."""


@dataclasses.dataclass(frozen=True)
class Expected:
    """Where a problem's expected outputs are (``files``, by kind: base, plus; read by the driver in the sandbox)
    and the canonical solution's ``seconds`` per input, by kind."""

    files: dict[str, str]
    seconds: dict[str, list[float]]

    def time_limits(self, kind: str) -> list[float]:
        """Per-input wall-clock limits in seconds: ``max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR x canonical time)``."""
        return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in self.seconds[kind]]

    def program_timeout(self, kind: str) -> float:
        """The sandbox limit for one run over ``kind``'s inputs, seconds."""
        return min(TASK_TIMEOUT_S, sum(self.time_limits(kind))) + 3.0


def cache_dir() -> Path:
    """``$WMTP_EVALPLUS_CACHE``, else ``$XDG_CACHE_HOME/wmtp_jax/evalplus`` (``~/.cache/...``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wmtp_jax" / "evalplus"
    return Path(os.environ.get("WMTP_EVALPLUS_CACHE") or default)


def _problem_dir(problem: Problem) -> Path:
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_dir() / f"{problem.differential.data_hash[:16]}-{version}" / problem.task_id.replace("/", "_")


def _canonical_run(problem: Problem, where: Path) -> Expected:
    tests = problem.differential
    files = {kind: str(where / f"{kind}.pkl") for kind in KINDS}
    request = {
        "canonical": tests.canonical,
        "entry_point": tests.entry_point,
        "inputs": {"base": tests.base_inputs, "plus": tests.plus_inputs},
        "not_none": tests.dataset == "mbpp" and tests.entry_point in NOT_NONE,
        "header": {"dataset": tests.dataset, "entry_point": tests.entry_point, "atol": tests.atol},
        "files": files,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(_CANONICAL)], input=pickle.dumps(request), capture_output=True, timeout=600
        )
        reply = json.loads(done.stdout) if done.stdout else {"error": done.stderr.decode(errors="replace")[-2000:]}
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        reply = {"error": f"{type(e).__name__}: {e}"}
    if "error" in reply:
        what = f"{problem.location}: the canonical solution of {problem.task_id} failed"
        raise CanonicalError(f"{what}:\n{reply['error']}")
    return Expected(files, reply["seconds"])


def expected_outputs(problems: Sequence[Problem], progress: bool = True) -> dict[str, Expected]:
    """``{task_id: Expected}`` for every problem with differential tests: the canonical solution's outputs and
    timings, from the cache (``cache_dir()``, one directory per data file and Python version) or computed once
    (made readable to every user: a sandbox that runs programs as its own uid reads them).

    Raises:
      CanonicalError: a canonical solution raised or ran for over 10 minutes."""
    result: dict[str, Expected] = {}
    todo = [p for p in dict.fromkeys(problems) if p.differential is not None]
    if not todo:
        return result
    bar = tqdm(total=len(todo), desc="expected outputs (canonical solutions)", disable=not progress)
    for problem in todo:
        where = _problem_dir(problem)
        index, files = where / "seconds.json", {k: str(where / f"{k}.pkl") for k in KINDS}
        if index.is_file():
            result[problem.task_id] = Expected(files, json.loads(index.read_text()))
            bar.total -= 1
            bar.refresh()
            continue
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))  # a complete directory or none
        try:
            expected = _canonical_run(problem, tmp)
            (tmp / "seconds.json").write_text(json.dumps(expected.seconds))
            for path in (tmp, *tmp.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
            try:
                os.replace(tmp, where)
            except OSError:  # another process wrote it meanwhile: same contents
                if not index.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result[problem.task_id] = Expected(files, expected.seconds)
        bar.update()
    bar.close()
    return result


def runs(problem: Problem, solution: str, expected: Expected, token: str) -> list[tuple[str, str, float]]:
    """The two sandbox runs judging ``solution`` (the complete program) on ``problem``: ``(kind, stdin, timeout_s)``
    for base and plus; the program of both is ``DRIVER``, which reads ``expected.files[kind]``."""
    return [
        (
            kind,
            json.dumps(
                {
                    "solution": solution,
                    "tests": expected.files[kind],
                    "time_limits": expected.time_limits(kind),
                    "token": token,
                }
            ),
            expected.program_timeout(kind),
        )
        for kind in KINDS
    ]


def verdict(result: ExecutionResult, kind: str, token: str) -> tuple[str, str]:
    """``(status, detail)`` of one driver run: "passed" only with the driver's own verdict line (the run's random
    ``token``); a failing input is named as "{kind} input {i}: {reason}"; a driver that cannot read its tests file
    is an "error" (not the completion's fault)."""
    line = next((x for x in result.stdout.splitlines() if x.startswith(token + " ")), "")
    words = line.split(" ", 3)
    if result.status == "passed" and words[1:2] == ["passed"]:
        return "passed", ""
    if words[1:2] in (["failed"], ["error"]) and len(words) == 4:
        index = int(words[2])
        where = f"{kind}: the solution" if index < 0 else f"{kind} input {index}"
        return words[1], f"{where}: {words[3]}"
    status = result.status if result.status != "passed" else "failed"
    return status, f"{kind}: {result.stderr[-300:] or 'ended without a verdict'}"
