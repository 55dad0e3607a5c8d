"""Precompute per-token tables for a prepared split: the Rho-1 reference CE, or Token Cleaning's labels.

Rho-1 without a reference forward in the step:
    uv run python scripts/precompute_ref_ce.py --reference CKPT --data data/mbpp/train.jsonl [--buckets 512 1024 2048]
then train with ``--config.weighting.rho1_reference_ce=data/mbpp/train`` (the prefix printed below).

Token Cleaning (Pang et al. 2025): the CE of the base model (before fine-tuning) and of the reference (the base
fine-tuned on a small high-quality set), then the top ``--token-ratio`` of all response tokens by
CE_base - CE_ref labelled 1:
    uv run python scripts/precompute_ref_ce.py --reference REF --base BASE --data data/mbpp/train.jsonl
then train with ``--config.weighting.scheme=token_cleaning --config.weighting.token_labels=data/mbpp/train``.
"""

import argparse
import sys

from wmtp_jax.checkpoint import ensure_orbax
from wmtp_jax.train.reference_ce import precompute_reference_ce, token_cleaning_labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="reference checkpoint (torch or Orbax directory)")
    parser.add_argument("--base", default="", help="Token Cleaning: the base checkpoint the reference was tuned from")
    parser.add_argument("--token-ratio", type=float, default=0.6, help="Token Cleaning: fraction of tokens kept")
    parser.add_argument("--data", required=True, help="prepared {split}.jsonl (index beside it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        default=[512, 1024, 2048],
        help="the training run's data.buckets (same maximum length)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--cache-dir", default="artifacts/converted")
    args = parser.parse_args(argv)
    common = dict(batch_size=args.batch_size, buckets=tuple(args.buckets), dtype=args.dtype)
    prefix = precompute_reference_ce(ensure_orbax(args.reference, args.cache_dir), args.data, **common)
    print(f"wrote {prefix}.ref_ce.npy and {prefix}.ref_ce_start.npy; use --config.weighting.rho1_reference_ce={prefix}")
    if args.base:
        precompute_reference_ce(ensure_orbax(args.base, args.cache_dir), args.data, name="base_ce", **common)
        found = token_cleaning_labels(args.data, ratio=args.token_ratio, max_length=max(args.buckets))
        print(
            f"wrote {prefix}.token_labels.npy: {found['kept']} of {found['response_tokens']} response tokens kept "
            f"(CE_base - CE_ref >= {found['threshold']:.4f} nats); use --config.weighting.scheme=token_cleaning "
            f"--config.weighting.token_labels={prefix}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
