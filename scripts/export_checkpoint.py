"""Export a model this project wrote to Meta's or Hugging Face's torch layout (the inverse of convert_checkpoint.py).

uv run python scripts/export_checkpoint.py SRC DST --format meta [--model-parallel N] [--dtype bfloat16]
uv run python scripts/export_checkpoint.py SRC DST --format hf [--head K] [--tokenizer PATH]

SRC: an Orbax model directory (a conversion, a run's final/), a LoRA run's final/ written as adapters
(export.merge_lora=False; merged while streaming), a training workdir (its latest checkpoint), a workdir's
checkpoints/STEP, or a torch checkpoint directory. See wmtp_jax/checkpoint/export.py for the layouts.
"""

import argparse
import sys

from wmtp_jax.checkpoint import CheckpointError
from wmtp_jax.checkpoint.export import FORMATS, export_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="model or adapter directory, training workdir or checkpoint step")
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--head", type=int, default=1, help="hf: the next-token head whose path is exported (1..H)")
    parser.add_argument("--model-parallel", type=int, default=1, help="meta: number of consolidated.NN.pth files")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="cast the weights (default: keep)"
    )
    parser.add_argument("--tokenizer", default=None, help="hf: SentencePiece model (default: the shipped LLaMA one)")
    parser.add_argument("--cache-dir", default="artifacts/converted", help="where a torch SRC is converted first")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        dst = export_checkpoint(
            args.src,
            args.dst,
            format=args.format,
            head=args.head,
            model_parallel=args.model_parallel,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            cache_dir=args.cache_dir,
            overwrite=args.overwrite,
        )
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {dst} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
