"""Orbax model directories -> Meta or Hugging Face torch layouts, one tensor at a time: the inverse of ``convert``.

``export_checkpoint(src, dst, format="meta")`` writes ``params.json`` + ``consolidated.NN.pth`` (one file per
model-parallel rank) with Meta's names, ``extra_heads`` included, so ``convert_torch_checkpoint`` of the export
gives back every parameter bit for bit. ``format="hf"`` writes a ``LlamaForCausalLM`` directory
(``config.json``, ``generation_config.json``, safetensors shards, tokenizer files): the whole model when
n_future_tokens = 1, else the path of one head (trunk blocks + that head's block as the last layer, shared
norm and output), which any LLaMA runtime serves as a plain next-token model. ``q_proj`` / ``k_proj`` rows get
transformers' rotate-half permutation (``convert_llama_weights_to_hf.py``); the model keeps Meta's interleaved
pairs. In both layouts the value head is written beside the weights as ``value_head.safetensors``
(``value_head.weight`` ``[1, dim]``, ``value_head.bias`` ``[1]``), which the converter reads back; a critic's MLP
head is written as ``value_head.{hidden,out}.{weight,bias}``, which the converter refuses with a clear error (load
the Orbax ``final/`` for it).

Memory: every source is read one tensor at a time. An Orbax model directory (a conversion, a run's ``final/``)
directly; a LoRA adapter directory (``export.merge_lora=False``) or a training workdir / checkpoint as its base
model's tensors with the trained ones on top (adapters folded in per block; a fully trained stacked leaf is read
once and spilled block by block to scratch files, so at most one stacked leaf is resident). Meta's ``.pth`` files
are written from tensors spilled to memory-mapped scratch files, HF's in safetensors shards of at most
``max_shard_bytes``; peak host memory is one tensor (Meta) or one shard (HF), not the model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
import torch

from wmtp_jax.checkpoint.convert import VALUE_HEAD_FILE, ensure_orbax, hf_rules, meta_rules
from wmtp_jax.checkpoint.store import (
    PARAMS_DIR,
    CheckpointError,
    disk_name,
    flatten,
    model_name,
    partial_load,
    read_adapter_config,
    read_config,
    unflatten,
)
from wmtp_jax.checkpoint.train_state import Resolved, resolve, run_lora_config, starting_model
from wmtp_jax.data.assets import TOKENIZER
from wmtp_jax.model import ModelConfig
from wmtp_jax.model.lora import LoraConfig
from wmtp_jax.model.mtp import STACKED_GROUPS
from wmtp_jax.model.quant import QUANTIZED, frozen_kernel

FORMATS = ("meta", "hf")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class _Source:
    """A model to export: its config and a reader of one on-disk tensor (``layers/3/attention/wq``) at a time."""

    cfg: ModelConfig
    names: dict[str, tuple[tuple[int, ...], np.dtype]]  # on-disk name -> (shape, dtype)
    read: Callable[[str], np.ndarray]
    description: str


def _leaf_reader(stored: dict, load: Callable[[dict], dict]) -> Callable[[str], np.ndarray]:
    """``read(name)``: one leaf of a checkpoint whose flat metadata is ``stored``, onto the host, by a partial
    ``load(target)`` of a target naming that leaf alone."""
    device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])

    def read(name: str) -> np.ndarray:
        leaf = stored[name]
        target = unflatten({name: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=device)})
        with partial_load():
            return np.asarray(flatten(load(target))[name])

    return read


def _params_reader(params_dir: Path) -> tuple[dict, Callable[[str], np.ndarray]]:
    """The flat metadata of an Orbax parameter tree and a reader of one of its leaves."""
    try:
        stored = flatten(ocp.metadata(params_dir).metadata)
    except Exception as e:  # Orbax raises several types for a missing or foreign directory
        raise CheckpointError(f"{params_dir}: not an Orbax parameter checkpoint ({type(e).__name__}: {e})") from None
    return stored, _leaf_reader(stored, lambda target: ocp.load(params_dir, target))


def _shapes(stored: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in stored.items()}


def _orbax_source(model_dir: Path) -> _Source:
    stored, read = _params_reader(model_dir.absolute() / PARAMS_DIR)
    return _Source(read_config(model_dir), _shapes(stored), read, f"orbax model {model_dir}")


class _BlockSpill:
    """Blocks of stacked leaves (``[L, ...]``), each read whole once and spilled block by block to memory-mapped
    scratch files, so that reading block ``i`` of many leaves in turn holds one stacked leaf at a time, never the
    model."""

    def __init__(self, read: Callable[[str], np.ndarray]):
        self.read, self.blocks = read, {}
        self.scratch = tempfile.TemporaryDirectory(prefix="wmtp_export_")

    def block(self, name: str, i: int) -> np.ndarray:
        if name not in self.blocks:
            stacked = self.read(name)
            blocks = []
            for j, x in enumerate(stacked):
                path = Path(self.scratch.name) / f"{len(self.blocks)}_{j}.npy"
                np.save(path, np.ascontiguousarray(x))
                blocks.append(path)
            del stacked
            self.blocks[name] = blocks
        return np.load(self.blocks[name][i], mmap_mode="r")


def _layered_source(
    base_dir: Path,
    trained: dict[str, tuple[tuple[int, ...], np.dtype]],
    read_trained: Callable[[str], np.ndarray],
    lora,
    description: str,
) -> _Source:
    """A run's model streamed one on-disk tensor at a time: the base model directory it started from, with the
    run's trained tensors (``trained``: in-memory names -> shape, dtype; ``read_trained(name)`` reads one) on top:
    full parameters and value heads replace the base's, and LoRA adapters are folded into their kernels as
    ``merge_lora`` does (``W + (alpha / r) A B`` in float32 on the base the adapters trained against: cast to
    bfloat16 or quantised and dequantised as ``lora.base_dtype`` says), stored in the base's dtype."""

    base = _orbax_source(base_dir)
    cfg = base.cfg
    names = dict(base.names)
    heads = {n for n in trained if n.startswith("value_head/")}
    if heads:  # the run's value head (a critic's MLP head may replace a linear one)
        names = {k: v for k, v in names.items() if not k.startswith("value_head/")}
        names.update({disk_name(n): trained[n] for n in heads})
        if "value_head/hidden/kernel" in trained:
            cfg = cfg.replace(value_head_hidden=trained["value_head/hidden/kernel"][0][-1])
    stacked = _BlockSpill(read_trained)
    base_dtype = lora.base_dtype if lora.enabled else ""

    def frozen(x: np.ndarray, projection: bool) -> np.ndarray:
        """A frozen base tensor as training saw it: a block projection quantised and dequantised (nf4 / int8) or
        cast (bfloat16); any other float tensor cast to bfloat16 (for nf4 / int8 too)."""
        if not base_dtype or not (x.dtype.kind == "f" or x.dtype.name == "bfloat16"):
            return x
        kind = base_dtype if projection or base_dtype not in QUANTIZED else "bfloat16"
        return np.asarray(frozen_kernel(x, kind)).astype(x.dtype)

    def read(name: str) -> np.ndarray:
        group, _, rest = name.partition("/")
        if group not in STACKED_GROUPS:
            if model_name(name) in trained:
                return read_trained(model_name(name))
            return base.read(name) if name.startswith("value_head/") else frozen(base.read(name), False)
        index, _, rest = rest.partition("/")
        leaf = model_name(f"{group}/{rest}")  # layers/attention/wq/kernel
        if leaf in trained:  # fully fine-tuned
            return np.asarray(stacked.block(leaf, int(index)))
        module = leaf.removesuffix("/kernel")
        x = base.read(name)
        if not leaf.endswith("/kernel"):  # a norm
            return frozen(x, False)
        if f"{module}/lora/lora_a" not in trained:
            return frozen(x, True)
        a = stacked.block(f"{module}/lora/lora_a", int(index)).astype(np.float32)
        b = stacked.block(f"{module}/lora/lora_b", int(index)).astype(np.float32)
        w = np.asarray(frozen_kernel(x, base_dtype)) + (a @ b) * lora.scale
        return w.astype(x.dtype)

    return _Source(cfg, names, read, description)


def _workdir_source(found: Resolved) -> _Source:
    """A training workdir's latest checkpoint or one ``checkpoints/STEP``: its trained parameters read one leaf at
    a time from the train state (the optimizer state is never read) over its starting model."""
    workdir, step_dir = found.workdir, found.step_dir
    stored = ocp.checkpointables_metadata(step_dir).metadata["state"].get("params")
    if stored is None:
        raise CheckpointError(f"{step_dir}/state: no 'params' in this train state")
    stored = flatten(stored)
    read_stored = _leaf_reader(
        stored, lambda target: ocp.load_checkpointables(step_dir, {"state": {"params": target}})["state"]["params"]
    )
    by_model = {model_name(n.removesuffix("/value")): n for n in stored}  # train-state names end in "/value"
    shapes = _shapes(stored)
    trained = {m: shapes[n] for m, n in by_model.items()}
    base = starting_model(workdir)
    description = f"training checkpoint {step_dir} (step {step_dir.name}; base {base})"
    return _layered_source(base, trained, lambda m: read_stored(by_model[m]), run_lora_config(workdir), description)


def _adapter_source(path: Path) -> _Source:
    """A LoRA adapter directory (``store.save_adapters``) over the base model it names."""

    config = read_adapter_config(path)
    stored, read = _params_reader(path.absolute() / PARAMS_DIR)
    base = Path(config["base_model"])
    lora = LoraConfig.from_config(config["lora"])
    return _layered_source(base, _shapes(stored), read, lora, f"LoRA adapters {path} (base {base})")


def open_source(src: str | Path, cache_dir: str | Path = "artifacts/converted") -> _Source:
    """The model at ``src``, streamed: an Orbax model directory, a LoRA adapter directory, a training workdir or
    ``checkpoints/STEP`` (trained tensors over the starting model), or a torch checkpoint directory (converted once
    into ``cache_dir``). Raises CheckpointError if none."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(
            f"{src}: not a model directory; expected an Orbax model directory (model_config.json + params/), "
            "a training workdir, a workdir's checkpoints/STEP or a torch checkpoint directory"
        )
    found = resolve(src)
    if found.kind == "model":
        return _orbax_source(src)
    if found.kind == "adapters":
        return _adapter_source(src)
    if found.kind == "torch":  # the cached conversion is itself streamed
        return _orbax_source(ensure_orbax(src, cache_dir))
    return _workdir_source(found)


def _cast(x: np.ndarray, dtype: str | None) -> torch.Tensor:
    x = np.require(x, requirements=["C", "W"])  # torch wants writable memory; copies only if it is not
    if x.dtype.name == "bfloat16":
        t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(x)
    return t if dtype is None else t.to(_TORCH_DTYPES[dtype])


def _rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved RoPE pairs -> transformers' rotate-half order on the rows of a torch ``[out, in]``
    q/k weight (the inverse of the converter's un-permutation)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _value_head(source: _Source, dtype: str | None) -> dict[str, torch.Tensor]:
    """The value head in torch's ``[out, in]`` convention: ``value_head.{weight, bias}`` for the linear head, or
    ``value_head.{hidden, out}.{weight, bias}`` for the critic's MLP head ({} when the model has none)."""
    out = {}
    for prefix in ("value_head", "value_head/hidden", "value_head/out"):
        if f"{prefix}/kernel" in source.names:
            name = prefix.replace("/", ".")
            out[f"{name}.weight"] = _cast(source.read(f"{prefix}/kernel"), dtype).T.contiguous()
            out[f"{name}.bias"] = _cast(source.read(f"{prefix}/bias"), dtype).contiguous()
    return out


def _write_value_head(source: _Source, dst: Path, dtype: str | None) -> None:
    from safetensors.torch import save_file

    tensors = _value_head(source, dtype)
    if tensors:
        save_file(tensors, dst / VALUE_HEAD_FILE, metadata={"format": "pt"})


def _spill(t: torch.Tensor, scratch: Path, i: int) -> torch.Tensor:
    """``t`` written to a scratch file and mapped back, so a shard of many tensors is never resident at once."""
    path = scratch / f"{i}.bin"
    t = t.contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    raw.numpy().tofile(path)
    return torch.from_file(str(path), shared=False, size=t.numel(), dtype=t.dtype).view(t.shape)


def _export_meta(source: _Source, dst: Path, model_parallel: int, dtype: str | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    cfg = source.cfg
    rules = meta_rules(cfg)
    for r in rules:
        if r.shard_dim is not None:
            shape = source.names[r.target][0]
            torch_shape = tuple(reversed(shape)) if r.transpose else shape
            if torch_shape[r.shard_dim] % model_parallel:
                raise CheckpointError(
                    f"--model-parallel {model_parallel}: {r.source} has {torch_shape[r.shard_dim]} rows / columns "
                    f"on its model-parallel dimension {r.shard_dim}, not divisible by {model_parallel}"
                )
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(model_parallel)]
    with tempfile.TemporaryDirectory(dir=dst) as scratch:
        for i, r in enumerate(tqdm(rules, desc="export -> meta", unit="tensor", disable=not progress)):
            t = _cast(source.read(r.target), dtype)
            t = t.T if r.transpose else t
            parts = [t] * model_parallel if r.shard_dim is None else list(t.chunk(model_parallel, r.shard_dim))
            for rank, part in enumerate(parts):
                shards[rank][r.source] = _spill(part, Path(scratch), i * model_parallel + rank)
            del t, parts
        for rank, sd in enumerate(shards):
            torch.save(sd, dst / f"consolidated.{rank:02d}.pth")
        del shards
    params = cfg.replace(value_head_hidden=0).to_params_json()  # Meta's keys only (the value head is beside)
    (dst / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def _hf_config(cfg: ModelConfig, dtype: str, head: int, source: str):
    from transformers import GenerationConfig, LlamaConfig

    config = LlamaConfig(
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_trunk_layers + 1,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype=dtype,
        architectures=["LlamaForCausalLM"],
        wmtp_export={"source": source, "head": head, "n_future_tokens": cfg.n_future_tokens},
    )
    return config, GenerationConfig(bos_token_id=1, eos_token_id=2)


def _write_tokenizer(tokenizer: Path, dst: Path) -> None:
    """The LLaMA SentencePiece model plus transformers' own files, so ``AutoTokenizer.from_pretrained(dst)``
    works. (transformers' tokenizer may split runs of spaces differently from SentencePiece; both decode alike.)"""
    from transformers import AutoTokenizer

    if not tokenizer.is_file():
        raise CheckpointError(f"tokenizer {tokenizer}: not found; expected a SentencePiece .model file")
    shutil.copyfile(tokenizer, dst / "tokenizer.model")
    (dst / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
            }
        )
    )
    AutoTokenizer.from_pretrained(dst).save_pretrained(dst)


def _shard_plan(names: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in names:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _export_hf(
    source: _Source, dst: Path, head: int, dtype: str | None, tokenizer: Path, max_shard_bytes: int, progress: bool
) -> None:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    cfg = source.cfg
    path_cfg = dataclasses.replace(cfg, n_layers=cfg.n_trunk_layers + 1, n_future_tokens=1)
    rules = []
    for r in hf_rules(path_cfg, tied=False):  # the last HF layer is this head's block
        if r.target.startswith("heads/0/"):
            r = dataclasses.replace(r, target=f"heads/{head - 1}/" + r.target.removeprefix("heads/0/"))
        rules.append(r)
    out_dtype = dtype or source.names[rules[0].target][1].name
    itemsize = np.dtype(jax.numpy.dtype(out_dtype)).itemsize
    sizes = [(r.source, int(np.prod(source.names[r.target][0])) * itemsize) for r in rules]
    plan = _shard_plan(sizes, max_shard_bytes)
    by_source = {r.source: r for r in rules}
    files = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    bar = tqdm(total=len(rules), desc="export -> hf", unit="tensor", disable=not progress)
    weight_map = {}
    for names, file in zip(plan, files):
        tensors = {}
        for name in names:
            r = by_source[name]
            t = _cast(source.read(r.target), dtype)
            t = t.T if r.transpose else t
            if r.rope_heads:
                t = _rope_permute(t, r.rope_heads)
            tensors[name] = t.contiguous()
            weight_map[name] = file
            bar.update()
        save_file(tensors, dst / file, metadata={"format": "pt"})
        del tensors
    bar.close()
    if len(plan) > 1:
        total = sum(n for _, n in sizes)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config, generation = _hf_config(cfg, out_dtype, head, source.description)
    config.save_pretrained(dst)
    generation.save_pretrained(dst)
    _write_tokenizer(tokenizer, dst)


def export_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    format: str,
    head: int = 1,
    model_parallel: int = 1,
    dtype: str | None = None,
    tokenizer: str | Path | None = None,
    max_shard_bytes: int = 2 * 2**30,
    cache_dir: str | Path = "artifacts/converted",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes the model at ``src`` in Meta's or Hugging Face's torch layout under ``dst``.

    Args:
      src: an Orbax model directory (a conversion, a run's ``final/``, merged LoRA), a training workdir (its
        latest checkpoint) or ``workdir/checkpoints/STEP``, or a torch checkpoint directory.
      dst: the output directory; written under a temporary name and renamed when complete.
      format: "meta" (``params.json`` + ``consolidated.NN.pth``) or "hf" (``LlamaForCausalLM``).
      head: "hf" only: which next-token head (1 = the next token, ..., n_future_tokens) ends the exported path.
      model_parallel: "meta" only: number of ``consolidated.NN.pth`` files, split as Meta's model-parallel ranks.
      dtype: "float32" or "bfloat16" to cast; None keeps the stored dtype (a round trip is then exact).
      tokenizer: "hf" only: SentencePiece model to ship beside the weights (default: the shipped LLaMA one).
      max_shard_bytes: "hf" only: largest safetensors shard.
      cache_dir: where a torch ``src`` is converted first.
      overwrite: replace an existing ``dst``.
      progress: tqdm progress bars.
    Returns:
      ``dst``.
    Raises:
      CheckpointError: ``src`` is not a model, unknown format or dtype, ``head`` out of
        ``1..n_future_tokens``, ``model_parallel`` not dividing a sharded dimension, or ``dst`` exists
        without ``overwrite``.
    """
    if format not in FORMATS:
        raise CheckpointError(f"format={format!r}: expected one of {list(FORMATS)}")
    if dtype not in (None, *_TORCH_DTYPES):
        raise CheckpointError(f"dtype={dtype!r}: expected None (keep) or one of {list(_TORCH_DTYPES)}")
    if not isinstance(model_parallel, int) or model_parallel < 1:
        raise CheckpointError(f"model_parallel={model_parallel!r}: expected a positive integer")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    source = open_source(src, cache_dir)
    if not 1 <= head <= source.cfg.n_future_tokens:
        raise CheckpointError(
            f"head={head}: {src} has {source.cfg.n_future_tokens} next-token heads; expected 1.."
            f"{source.cfg.n_future_tokens}"
        )
    if tokenizer is None:
        tokenizer = TOKENIZER
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if format == "meta":
            _export_meta(source, tmp, model_parallel, dtype, progress)
        else:
            _export_hf(source, tmp, head, dtype, Path(tokenizer), max_shard_bytes, progress)
        _write_value_head(source, tmp, dtype)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
