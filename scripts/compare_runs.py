"""Build a study report (report.md, figures, summary.json) from finished training or eval workdirs.

    uv run python scripts/compare_runs.py workdir/baseline workdir/rho1 --out reports/rho1-vs-baseline
    uv run python scripts/compare_runs.py baseline=runs/b/seed0,runs/b/seed1 rho1=runs/r/seed0,runs/r/seed1 \
        --baseline baseline --out reports/study

Each argument is an arm: a workdir (named after its directory) or NAME=DIR[,DIR...] for several seeds, pooled per
problem. A workdir needs ``eval/results.json`` and ``eval/samples.jsonl`` (a training run with
``train.eval_at_end=True``, or an eval job whose ``--config.workdir`` it was). The first arm is the baseline unless
``--baseline`` names another. Exit status 2 with the reason when a workdir cannot be used.
"""

import argparse
import sys
from pathlib import Path

from wmtp_jax.study.report import Arm, ReportError, build


def parse_arm(text: str) -> Arm:
    name, sep, dirs = text.partition("=")
    if not sep:
        return Arm(Path(text).name, (Path(text),))
    return Arm(name, tuple(Path(d) for d in dirs.split(",") if d))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="+", help="WORKDIR or NAME=DIR[,DIR...]")
    parser.add_argument("--baseline", default="", help="the arm the others are compared with (default: the first)")
    parser.add_argument("--out", required=True, help="directory for report.md, summary.json and the figures")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--flips", type=int, default=10_000)
    args = parser.parse_args()
    arms = [parse_arm(a) for a in args.arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        print(f"error: arm names repeat: {names}; use NAME=DIR", file=sys.stderr)
        return 2
    try:
        build(
            arms,
            args.baseline or names[0],
            Path(args.out),
            bootstrap=args.bootstrap,
            flips=args.flips,
            title="Comparison of runs",
        )
    except (ReportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {Path(args.out) / 'report.md'}; summary: {Path(args.out) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
