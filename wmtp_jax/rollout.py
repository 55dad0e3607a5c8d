"""The ``rollout`` job: training data for the verifiable critic, made by the policy itself.

For each training problem (``rollout.source``): sample ``rollout.n_samples`` completions of its Alpaca prompt,
run each against the problem's tests in the sandbox, and write them as Alpaca JSONL + index + stats + report (the
data-preparation format of ``data/prepare.py``) with ``is_correct`` from execution, ready for
``--config.data.train`` of ``configs/critic.py``.
"""

from __future__ import annotations

from pathlib import Path

from wmtp_jax.data import benchmarks
from wmtp_jax.data.prepare import RecordGroup, write_split
from wmtp_jax.data.records import AlpacaRecord
from wmtp_jax.distributed import is_main_process
from wmtp_jax.eval import judge
from wmtp_jax.eval import run as eval_run
from wmtp_jax.eval.generate import GenerationConfig, Generator


def run(c) -> dict:
    """Samples ``rollout.n_samples`` completions per problem, labels each by execution and writes the Alpaca
    JSONL + index; returns the data-preparation stats of the written split."""
    r = c.rollout
    isolation, mesh, model, source, tok = eval_run.setup(c)
    problems = benchmarks.load(r.source, mbpp_split=r.mbpp_split, codecontests_paths=tuple(r.codecontests))
    if r.limit:
        problems = problems[: r.limit]
    config = GenerationConfig.from_config(r, stop=("\n### ",))
    completions, _ = eval_run.generate(
        Generator(model, mesh, tok, r.batch_size),
        [p.alpaca_prompt for p in problems],
        config,
        r.n_samples,
        c.seed,
        f"rollout {r.source}",
    )
    if not is_main_process():  # every process generates (collectively); process 0 executes and writes
        return {}
    pairs = [(p, comp.text) for p, row in zip(problems, completions) for comp in row]
    outcomes = iter(judge.check(pairs, timeout_s=r.timeout_s, memory_mb=r.memory_mb, alpaca=True))
    data_problems = []
    for problem, row in zip(problems, completions):
        group = RecordGroup(f"{r.source}:{problem.task_id}", problem.task_id)
        for j, comp in enumerate(row):
            outcome = next(outcomes)
            if not comp.text.strip():
                group.skipped.append((f"{problem.task_id} sample {j}", "empty_completion"))
                continue
            group.records.append(
                AlpacaRecord(
                    instruction=problem.instruction,
                    input=problem.input,
                    output=comp.text,
                    task_id=problem.task_id,
                    is_correct=outcome.status == "passed",
                    metadata={
                        "source": f"rollout/{r.source}",
                        "difficulty": 0,
                        "has_tests": True,
                        "tests": {"asserts": problem.tests} if problem.tests else {"stdio": problem.stdio},
                        "status": outcome.status,
                        "finish": comp.finish,
                        "policy": source,
                        "sandbox_isolation": isolation,
                    },
                )
            )
        data_problems.append(group)
    out_dir = Path(r.out_dir or Path(c.workdir) / "rollouts")
    result = write_split(data_problems, out_dir, r.split_name, [], tok, r.max_length)
    stats = result.stats
    print(
        f"rollouts: {stats['records']} records ({stats['correct']} correct, {stats['incorrect']} incorrect) "
        f"from {len(problems)} problems -> {out_dir / (r.split_name + '.jsonl')}; "
        f"skipped {stats['skipped']}, filtered {stats['filtered']}"
    )
    return stats
