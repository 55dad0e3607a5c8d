"""Benchmark: record-index size / memory / load+sample time at CodeContests scale, loader throughput, and the
cost of decontamination in data preparation.

    uv run python scripts/bench_data.py [--records 3691981] [--workers 0 2] [--decontam-records 3691981]

1. Writes a synthetic index with 3,691,981 records in 13,328 problems (the CodeContests train split), then,
   in a fresh subprocess that has imported numpy and wmtp_jax.data only, loads it and builds a balanced
   and a curriculum plan of 1M draws: prints the file size, the RSS added, and the time.
2. Streams the shipped MBPP train split through the Grain pipeline packed into 2048-token rows (batch 8)
   and prints tokens/s (non-padding tokens) for each worker count.
3. Writes a synthetic CodeContests train JSONL of ``--decontam-records`` Python solutions (default: the train
   split's 3,691,981, in 13,328 problems; statements ~300 words, solutions ~100 code tokens, as in the real split)
   plus a 165-problem "test" file, 0.1% of the train solutions copied from it; then times ``prepare`` of the train
   split without and with decontamination against HumanEval, the MBPP test split and the test file. Prints both
   times, the ratio (target <= 1.5x) and the dropped records (must equal the planted copies).
   ``--decontam-records 0`` skips it (it needs ~2x the input size in free disk).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
from wmtp_jax.data.records import RecordIndex
from wmtp_jax.data.sampling import SamplingConfig, build_plan

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
t = time.perf_counter()
index = RecordIndex.load(sys.argv[1])
t_load = time.perf_counter() - t
after_load = rss_kib()
t = time.perf_counter()
balanced = build_plan(index, SamplingConfig("balanced"), 1_000_000, seed=0)
t_balanced = time.perf_counter() - t
t = time.perf_counter()
curriculum = build_plan(index, SamplingConfig("curriculum"), 1_000_000, seed=0)
t_curriculum = time.perf_counter() - t
print(json.dumps({"load_s": t_load, "balanced_s": t_balanced, "curriculum_s": t_curriculum,
                  "rss_load_kib": after_load - before, "rss_total_kib": rss_kib() - before}))
"""


def synthetic_index(n_records: int, n_problems: int, seed: int = 0):
    from wmtp_jax.data.records import RECORD_DTYPE, RecordIndex

    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(np.arange(1, n_records), n_problems - 1, replace=False))
    problem_start = np.concatenate([[0], starts, [n_records]]).astype(np.int64)
    offsets = np.cumsum(rng.integers(500, 4000, n_records)) - 500
    records = np.zeros(n_records, RECORD_DTYPE)
    records["offset_lo"], records["offset_hi"] = offsets & 0xFFFFFFFF, offsets >> 32
    records["flags"] = rng.random(n_records) < 1_754_404 / 3_691_981
    records["length"] = rng.integers(100, 2048, n_records)
    difficulty = rng.integers(1, 12, n_problems).astype(np.int16)
    ids = np.asarray([f"problem_{i}" for i in range(n_problems)])
    return RecordIndex(records, problem_start, difficulty, ids)


def bench_index(n_records: int, n_problems: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.index.npz"
        synthetic_index(n_records, n_problems).save(path)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"index: {n_records:,} records, {n_problems:,} problems")
        print(f"  file size          : {path.stat().st_size / 2**20:.1f} MiB (target <= 32 MB)")
        print(
            f"  RSS added by load  : {r['rss_load_kib'] / 1024:.1f} MiB; after both plans: "
            f"{r['rss_total_kib'] / 1024:.1f} MiB"
        )
        print(f"  load               : {r['load_s']:.2f} s")
        print(
            f"  balanced plan 1M   : {r['balanced_s']:.2f} s; curriculum plan 1M: {r['curriculum_s']:.2f} s "
            f"(target load + sample <= 2 s)"
        )


def bench_loader(workers: list[int], n_batches: int) -> None:
    from wmtp_jax.data.pipeline import PipelineConfig, make_dataset
    from wmtp_jax.data.prepare import prepare
    from wmtp_jax.data.records import RecordIndex
    from wmtp_jax.data.sampling import SamplingConfig, build_plan
    from wmtp_jax.data.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        prepare("mbpp", tmp, split="train")
        index = RecordIndex.load(os.path.join(tmp, "train.index.npz"))
        plan = build_plan(index, SamplingConfig("correct"), 20000, seed=0)
        for n in workers:
            ds = make_dataset(
                os.path.join(tmp, "train.jsonl"),
                index.offsets(plan),
                Tokenizer(),
                PipelineConfig(batch_size=8, buckets=(2048,), pack=True, num_workers=n),
            )
            it = iter(ds)
            next(it)  # start-up (worker processes) not counted
            t, tokens = time.perf_counter(), 0
            for _ in range(n_batches):
                tokens += int((next(it)["segment_ids"] > 0).sum())
            dt = time.perf_counter() - t
            print(
                f"loader: {n} workers, packed 8 x 2048 batches: {tokens / dt:,.0f} tokens/s "
                f"({n_batches / dt:.1f} batches/s)"
            )


def _words(rng, vocab: list[str], mean: int) -> str:
    n = max(5, int(rng.normal(mean, mean / 3)))
    return " ".join(vocab[i] for i in rng.integers(0, len(vocab), n))


def write_synthetic_codecontests(path: Path, n_records: int, n_problems: int, test: list[str], seed: int = 0) -> int:
    """CodeContests-schema JSONL with ``n_records`` Python solutions; every 1000th is a copy of a ``test``
    solution. Returns the number of planted copies."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(5000)]
    code = [f"v{i}" for i in range(1500)] + ["=", "+", "-", "*", "(", ")", "for", "in", "range(n):", "print(x)"] * 20
    per_problem = np.diff(np.linspace(0, n_records, n_problems + 1).astype(int))
    planted, written = 0, 0
    with open(path, "w") as f:
        for p, k in enumerate(per_problem):
            solutions = []
            for _ in range(k):
                if written % 1000 == 999:
                    solutions.append(test[written % len(test)])
                    planted += 1
                else:
                    solutions.append(_words(rng, code, 100))
                written += 1
            n_good = int(k) // 2
            row = {
                "name": f"{p}_A. Problem {p}",
                "description": _words(rng, words, 300),
                "public_tests": {"input": ["1\n"], "output": ["2\n"]},
                "difficulty": int(1 + p % 11),
                "solutions": {"language": [3] * n_good, "solution": solutions[:n_good]},
                "incorrect_solutions": {"language": [3] * (k - n_good), "solution": solutions[n_good:]},
            }
            f.write(json.dumps(row) + "\n")
    return planted


def bench_decontamination(n_records: int, n_problems: int) -> None:
    from wmtp_jax.data.prepare import prepare

    rng = np.random.default_rng(1)
    code = [f"t{i}" for i in range(1500)]
    test = [_words(rng, code, 100) for _ in range(165 * 20)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test_rows = [
            {
                "name": f"test {i}",
                "description": _words(rng, code, 300),
                "solutions": {"language": [3] * 20, "solution": test[20 * i : 20 * i + 20]},
            }
            for i in range(165)
        ]
        (tmp / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
        t = time.perf_counter()
        planted = write_synthetic_codecontests(tmp / "train.jsonl", n_records, n_problems, test)
        size = (tmp / "train.jsonl").stat().st_size
        print(
            f"decontamination: {n_records:,} synthetic train solutions of {n_problems:,} problems "
            f"({size / 2**30:.2f} GiB JSONL, written in {time.perf_counter() - t:.0f} s), {planted:,} copied from "
            "the 165-problem test file"
        )
        seconds, dropped = {}, {}
        for on in (False, True):
            t = time.perf_counter()
            (r,) = prepare(
                "codecontests",
                tmp / ("on" if on else "off"),
                [str(tmp / "train.jsonl")],
                split="train",
                max_length=4096,
                decontaminate=on,
                decontaminate_against=[tmp / "test.jsonl"],
            )
            seconds[on] = time.perf_counter() - t
            dropped[on] = (r.stats["decontamination"] or {}).get("dropped", 0)
            print(
                f"  prepare, decontamination {'on ' if on else 'off'}: {seconds[on]:.1f} s "
                f"({n_records / seconds[on]:,.0f} records/s), {r.n_records:,} records kept, {dropped[on]:,} dropped"
            )
            shutil.rmtree(tmp / ("on" if on else "off"))
        print(
            f"  slowdown: {seconds[True] / seconds[False]:.2f}x (target <= 1.5x); dropped == planted: "
            f"{dropped[True] == planted}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3_691_981)
    parser.add_argument("--problems", type=int, default=13_328)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--decontam-records", type=int, default=3_691_981, help="0 = skip")
    parser.add_argument("--skip-index", action="store_true", help="only the loader and decontamination parts")
    args = parser.parse_args()
    if not args.skip_index:
        bench_index(args.records, args.problems)
        bench_loader(args.workers, args.batches)
    if args.decontam_records:
        # problems scale with the records, so that a smaller run keeps the real ~277 solutions per statement
        problems = max(1, round(args.problems * args.decontam_records / 3_691_981))
        bench_decontamination(args.decontam_records, problems)
    return 0


if __name__ == "__main__":
    sys.exit(main())
