"""Prints how often this project's judge agrees with the official harnesses (``wmtp_jax.eval.agreement``).

  uv run python scripts/check_judge.py                       # all 164 HumanEval + 500 MBPP test problems
  uv run python scripts/check_judge.py --benchmarks humaneval_plus,mbpp_plus   # vs evalplus 0.3.1
  uv run python scripts/check_judge.py --limit 20 --kinds canonical,main_unittest
  uv run python scripts/check_judge.py --as-main             # the judge before the fix: programs run as __main__

Every (benchmark, completion kind) row gives the completions, how many each judge passed, and the
disagreements (a few named); a disagreement listed in ``agreement.DELIBERATE`` is marked with its reason.
Exits 1 if any other disagreement is found.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", default="humaneval,mbpp")
    parser.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    parser.add_argument("--kinds", default="", help="comma-separated completion kinds (default: all)")
    parser.add_argument("--workers", type=int, default=4, help="threads running the reference harness")
    parser.add_argument("--as-main", action="store_true", help="run assert-style programs as __main__ (old judge)")
    args = parser.parse_args()

    from wmtp_jax.data import benchmarks
    from wmtp_jax.eval import agreement
    from wmtp_jax.sandbox.execution import start_worker_pool

    start_worker_pool()
    known = [*agreement.COMPLETION_KINDS, *agreement.PLUS_KINDS]
    kinds = [k for k in args.kinds.split(",") if k] or known
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        parser.error(f"unknown kinds {unknown}; expected some of {known}")
    verdicts = []
    for name in args.benchmarks.split(","):
        problems = benchmarks.load(name, mbpp_format="zeroshot")
        problems = problems[: args.limit] if args.limit else problems
        start = time.perf_counter()
        verdicts += agreement.compare(problems, kinds, workers=args.workers, as_main=args.as_main)
        print(
            f"{name}: {len(problems)} problems x {len(kinds)} kinds judged twice in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
    rows = agreement.table(verdicts)
    print("| benchmark | kind | n | passed (ours) | passed (reference) | disagree | deliberate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['benchmark']} | {r['kind']} | {r['n']} | {r['ours_passed']} | {r['reference_passed']} | "
            f"{r['disagree']} | {r['deliberate']} |"
        )
    total = sum(r["n"] for r in rows)
    same = total - sum(r["disagree"] + r["deliberate"] for r in rows)
    print(f"\nagreement: {same} / {total} completions ({100 * same / max(total, 1):.2f} %)")
    reasons = {task: reason for r in rows for task, reason in r["reasons"].items()}
    for task, reason in reasons.items():
        print(f"deliberate: {task}: {reason}")
    unexplained = [r for r in rows if r["disagree"]]
    for r in unexplained:
        print(f"unexplained: {r['benchmark']} {r['kind']}: " + "; ".join(r["examples"]))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
