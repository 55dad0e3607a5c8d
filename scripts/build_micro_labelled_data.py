"""Build the shipped critic / verifiable micro data: MBPP solutions labelled by running their tests.

    uv run python scripts/build_micro_labelled_data.py [OUT] [--split train|validation]
    (default: the train split into wmtp_jax/assets/micro/mbpp_train_labelled.jsonl; --split validation writes
    mbpp_validation_labelled.jsonl, the critic's held-out set: problems 511-600, never seen in critic training)

MBPP has only correct reference solutions. For every task of the split this writes the reference code and up to
two single-edit mutants of it (an operator, comparison, constant or boolean flipped), each labelled
``is_correct`` by actually executing the task's tests in the sandbox (a mutant that still passes stays
correct). Records are Alpaca JSONL in the format of scripts/prepare_data.py; deterministic.
"""

import argparse
import json
import sys
from pathlib import Path

from wmtp_jax.data import assets
from wmtp_jax.data.benchmarks import MBPP_SPLITS
from wmtp_jax.sandbox.execution import execute

MUTATIONS = [
    (" + ", " - "),
    (" - ", " + "),
    (" < ", " <= "),
    (" > ", " >= "),
    (" <= ", " < "),
    (" >= ", " > "),
    (" == ", " != "),
    (" != ", " == "),
    (" and ", " or "),
    (" or ", " and "),
    ("True", "False"),
    ("False", "True"),
    ("[0]", "[1]"),
    ("return 0", "return 1"),
    (" * ", " + "),
    ("+ 1", "+ 2"),
    ("- 1", "- 2"),
    ("max(", "min("),
    ("min(", "max("),
]


def mutants(code: str, limit: int = 2) -> list[str]:
    out = []
    for old, new in MUTATIONS:
        if old in code:
            out.append(code.replace(old, new, 1))
            if len(out) == limit:
                break
    return out


def program(code: str, task: dict) -> str:
    return "\n".join([code, task.get("test_setup_code") or "", *task["test_list"]]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=None)
    parser.add_argument("--split", default="train", choices=["train", "validation"])
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out or assets.ASSETS_DIR / "micro" / f"mbpp_{args.split}_labelled.jsonl")
    lo, hi = MBPP_SPLITS[args.split]
    tasks = [t for t in map(json.loads, open(assets.MBPP)) if lo <= t["task_id"] <= hi]
    candidates = []
    for t in tasks:
        code = t["code"].replace("\r\n", "\n")
        candidates += [(t, c) for c in [code] + mutants(code)]
    results = execute([program(c, t) for t, c in candidates], timeout_s=5, memory_mb=512)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"correct": 0, "incorrect": 0, "reference_failed": 0}
    with open(out, "w") as f:
        for (t, code), r in zip(candidates, results):
            is_reference = code == t["code"].replace("\r\n", "\n")
            if is_reference and r.status != "passed":
                counts["reference_failed"] += 1
                continue  # a reference that fails its own tests (environment-dependent) is not a label
            correct = r.status == "passed"
            counts["correct" if correct else "incorrect"] += 1
            f.write(
                json.dumps(
                    {
                        "instruction": t["text"],
                        "input": "\n".join(t["test_list"]),
                        "output": code,
                        "task_id": f"mbpp/{t['task_id']}",
                        "is_correct": correct,
                        "metadata": {
                            "source": "mbpp-labelled",
                            "difficulty": 0,
                            "has_tests": True,
                            "label": "reference" if is_reference else "mutant",
                            "execution": r.status,
                            "tests": {"test_list": t["test_list"], "test_setup_code": t.get("test_setup_code", "")},
                        },
                    }
                )
                + "\n"
            )
    print(f"wrote {out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
