"""Precompute the Rho-1 reference CE for a prepared split, so Rho-1 steps skip the reference forward.

    uv run python scripts/precompute_ref_ce.py --reference CKPT --data data/mbpp/train.jsonl [--buckets 512 1024 2048]
then train with ``--config.weighting.rho1_reference_ce=data/mbpp/train`` (the prefix printed below).
"""

import argparse
import sys

from wmtp_jax.checkpoint import ensure_orbax
from wmtp_jax.train.reference_ce import precompute_reference_ce


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="reference checkpoint (torch or Orbax directory)")
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
    prefix = precompute_reference_ce(
        ensure_orbax(args.reference, args.cache_dir),
        args.data,
        batch_size=args.batch_size,
        buckets=tuple(args.buckets),
        dtype=args.dtype,
    )
    print(f"wrote {prefix}.ref_ce.npy and {prefix}.ref_ce_start.npy; use --config.weighting.rho1_reference_ce={prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
