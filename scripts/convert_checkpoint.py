"""Convert a Meta (params.json + consolidated*.pth) or Hugging Face LlamaForCausalLM checkpoint to Orbax.

uv run python scripts/convert_checkpoint.py SRC DST [--vocab-size 32000] [--dtype bfloat16] [--overwrite]
"""

import argparse
import sys

from wmtp_jax.checkpoint import CheckpointError, convert_torch_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="torch checkpoint directory (Meta or Hugging Face layout)")
    parser.add_argument("dst", help="output directory (model_config.json + params/)")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="keep only the first N vocabulary rows (CodeLlama-7b-hf: 32016 -> 32000)",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="storage dtype (default: keep the source dtype)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        cfg = convert_torch_checkpoint(
            args.src, args.dst, vocab_size=args.vocab_size, dtype=args.dtype, overwrite=args.overwrite
        )
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.dst}: {cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_future_tokens} future-token heads, "
        f"vocab {cfg.vocab_size}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
