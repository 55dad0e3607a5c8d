"""Tiny random torch checkpoints: local stand-ins for Meta's 7B_1T_4 and a Hugging Face reference model.

Both use the real LLaMA vocabulary size (32000) so the shipped tokenizer and data run through them.
Weights are N(0, 0.02) (norm scales 1) from a fixed seed, so the files are identical on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wmtp_jax.checkpoint.convert import meta_rules
from wmtp_jax.checkpoint.store import flat_param_shapes
from wmtp_jax.model import ModelConfig

# Stand-in for 7B_1T_4: 2 trunk blocks + 4 parallel heads.
MICRO_MTP = ModelConfig(
    dim=64, n_layers=6, n_heads=4, n_kv_heads=2, vocab_size=32000, multiple_of=32, n_future_tokens=4, max_seq_len=2048
)
# Stand-in for Sheared-LLaMA (the Rho-1 reference): a plain LLaMA.
MICRO_REFERENCE_HF = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def meta_state_dict(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """A random state dict with Meta's keys and torch ``[out, in]`` shapes for ``cfg``.

    Shapes come from the model itself (``flat_param_shapes``), transposed back where the converter transposes.
    """
    gen = torch.Generator().manual_seed(seed)
    expected = flat_param_shapes(cfg)
    sd = {}
    for rule in meta_rules(cfg):
        shape = tuple(reversed(expected[rule.target])) if rule.transpose else expected[rule.target]
        if len(shape) == 1:  # norm scales around 1
            sd[rule.source] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            sd[rule.source] = std * torch.randn(shape, generator=gen)
    return sd


def write_meta_checkpoint(
    dst: str | Path, cfg: ModelConfig = MICRO_MTP, seed: int = 0, n_shards: int = 1, dtype: torch.dtype = torch.float32
) -> Path:
    """Writes ``params.json`` + ``consolidated.pth`` (or ``consolidated.NN.pth`` model-parallel shards)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    sd = {k: v.to(dtype) for k, v in meta_state_dict(cfg, seed).items()}
    (dst / "params.json").write_text(json.dumps(cfg.to_params_json(), indent=2))
    if n_shards == 1:
        torch.save(sd, dst / "consolidated.pth")
        return dst
    dims = {r.source: r.shard_dim for r in meta_rules(cfg)}
    for i in range(n_shards):
        shard = {k: (v.chunk(n_shards, dims[k])[i].clone() if dims[k] is not None else v) for k, v in sd.items()}
        torch.save(shard, dst / f"consolidated.{i:02d}.pth")
    return dst


def write_hf_checkpoint(
    dst: str | Path, config: dict | None = None, seed: int = 0, safe_serialization: bool = True
) -> Path:
    """Writes a random ``LlamaForCausalLM`` with ``save_pretrained`` (``config.json`` + weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**(config or MICRO_REFERENCE_HF)))
    with torch.no_grad():  # non-trivial norm scales so a wrong norm mapping cannot pass unnoticed
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(dst, safe_serialization=safe_serialization)
    return Path(dst)


def write_micro_models(out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Writes (once) the micro MTP model (Meta layout) and the micro reference (HF layout) under ``out_dir``.

    Returns ``{"policy": out_dir/mtp_meta, "reference": out_dir/reference_hf}``. Existing, complete
    directories are kept unless ``overwrite``; a marker file written last makes an interrupted run redo it.
    """
    out_dir = Path(out_dir)
    paths = {"policy": out_dir / "mtp_meta", "reference": out_dir / "reference_hf"}
    writers = {
        "policy": lambda p: write_meta_checkpoint(p, MICRO_MTP, seed=0),
        "reference": lambda p: write_hf_checkpoint(p, MICRO_REFERENCE_HF, seed=0),
    }
    for name, path in paths.items():
        done = path / ".complete"
        if done.exists() and not overwrite:
            continue
        writers[name](path)
        done.write_text("ok\n")
    return paths
