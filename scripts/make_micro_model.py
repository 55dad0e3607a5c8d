"""Write the tiny random torch checkpoints used by the ``:micro`` presets and the tests.

    uv run python scripts/make_micro_model.py [OUT_DIR]   (default: artifacts/micro)

OUT_DIR/mtp_meta        Meta layout (params.json + consolidated.pth): 2 trunk blocks + 4 heads, dim 64,
                        GQA 4/2, 32000 vocab — the local stand-in for 7B_1T_4.
OUT_DIR/reference_hf    Hugging Face LlamaForCausalLM (config.json + model.safetensors): 3 blocks, dim 64,
                        32000 vocab — the local stand-in for Sheared-LLaMA (Rho-1 reference).
Weights come from a fixed seed, so every machine writes the same files.
"""

import sys

from wmtp_jax.checkpoint.micro import write_micro_models


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else "artifacts/micro"
    paths = write_micro_models(out, overwrite=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
