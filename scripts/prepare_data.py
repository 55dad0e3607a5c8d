"""Prepare Alpaca JSONL + index + stats + report from CodeContests, MBPP or HumanEval.

    uv run python scripts/prepare_data.py --source mbpp --output data/mbpp
    uv run python scripts/prepare_data.py --source humaneval --output data/humaneval
    uv run python scripts/prepare_data.py --source codecontests --input cc/train-*.parquet cc/valid-*.parquet \
        --output data/codecontests --max-length 2048

MBPP and HumanEval default to the copies shipped in wmtp_jax/assets. Training splits (train, validation) are
decontaminated against HumanEval and the MBPP test split (13-grams of whitespace tokens; see
wmtp_jax/data/decontaminate.py): overlapping records are dropped, counted and listed with the evaluation problem
they overlap; CodeContests valid / test shards given as --input also guard the train split. A CodeContests record's
input carries up to two public tests as worked examples (--codecontests-examples). Exits 1 only when nothing usable
remains.
"""

import argparse
import sys

from wmtp_jax.data.prepare import NothingUsable, prepare
from wmtp_jax.data.tokenizer import Tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=["codecontests", "mbpp", "humaneval", "alpaca", "synthetic"])
    parser.add_argument("--input", nargs="*", default=None, help="input files (default for mbpp/humaneval: shipped)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--split", default=None, help="only this split (mbpp) / force this split name (codecontests)")
    parser.add_argument("--max-length", type=int, default=2048, help="drop records longer than this many tokens")
    parser.add_argument("--tokenizer", default=None, help="SentencePiece model (default: shipped LLaMA tokenizer)")
    parser.add_argument(
        "--no-decontaminate",
        action="store_true",
        help="keep training records that overlap an evaluation problem (default: drop them, listed in the report)",
    )
    parser.add_argument(
        "--decontaminate-against",
        nargs="*",
        default=(),
        help="more evaluation files (e.g. CodeContests test/valid parquet) besides HumanEval and the MBPP test split",
    )
    parser.add_argument("--ngram", type=int, default=13, help="n-gram length for decontamination (whitespace tokens)")
    parser.add_argument(
        "--codecontests-examples",
        type=int,
        default=2,
        help="public tests shown as worked examples in a CodeContests record's input (0 = none)",
    )
    args = parser.parse_args(argv)
    try:
        results = prepare(
            args.source,
            args.output,
            args.input,
            split=args.split,
            max_length=args.max_length,
            tokenizer=Tokenizer(args.tokenizer) if args.tokenizer else None,
            progress=True,
            decontaminate=not args.no_decontaminate,
            decontaminate_against=args.decontaminate_against,
            ngram=args.ngram,
            codecontests_examples=args.codecontests_examples,
        )
    except NothingUsable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        s, rep = r.stats, r.report
        print(
            f"{r.split:>10}: {s['records']} records ({s['correct']} correct, {s['incorrect']} incorrect) "
            f"from {s['problems']} problems; skipped {rep['skipped_total']} {rep['skipped_by_reason']}; "
            f"filtered {rep['filtered_by_reason']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
