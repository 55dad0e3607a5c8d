"""torch checkpoints (Meta MTP layout or Hugging Face ``LlamaForCausalLM``) -> Orbax, one tensor at a time.

Layouts (``docs/formulas.md``, "Model layout"):
  Meta: ``params.json`` + ``consolidated.pth`` or model-parallel ``consolidated.NN.pth`` shards
        (wq/wk/wv/w1/w3/output concatenated on dim 0, wo/w2/tok_embeddings on dim 1, norms replicated).
        ``layers`` has ``n_layers - n_future_tokens + 1`` blocks: all but the last form the trunk, the last
        is head 0; ``extra_heads.{j}`` are heads 1..n_future_tokens-1.
  Hugging Face: ``config.json`` + ``*.safetensors`` or ``pytorch_model*.bin``. ``q_proj``/``k_proj`` rows are
        stored permuted for rotate-half RoPE (transformers' ``convert_llama_weights_to_hf.py``); the inverse
        permutation restores Meta's interleaved-pair layout used by ``wmtp_jax.model``.
Torch ``Linear.weight`` is ``[out, in]``; the model stores ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from orbax.checkpoint.experimental.v1 import partial as ocp_partial
from tqdm.auto import tqdm

from wmtp_jax.checkpoint.sources import SafetensorsFile, SourceError, open_file
from wmtp_jax.checkpoint.store import (
    CONFIG_FILE,
    PARAMS_DIR,
    CheckpointError,
    flat_param_shapes,
    read_config,
    unflatten,
    write_config,
)
from wmtp_jax.files import atomic_write_text
from wmtp_jax.model import ModelConfig, ModelConfigError
from wmtp_jax.model.config import DTYPES

VALUE_HEAD_FILE = "value_head.safetensors"  # beside exported weights (``wmtp_jax.checkpoint.export``)
# Buffers some releases store that carry no weights (recomputed by the model).
_IGNORED_SOURCE_KEYS = re.compile(r"(^rope\.freqs$|\.rotary_emb\.inv_freq$)")
_STORAGE_DTYPES = {None: None, **{name: np.dtype(DTYPES[name]) for name in ("float32", "bfloat16")}}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """How one model parameter is made from one source tensor."""

    target: str  # "layers/0/attention/wq"
    source: str  # "layers.0.attention.wq.weight"
    shard_dim: int | None = None  # model-parallel concat dim (Meta shards); None = replicated
    transpose: bool = False  # torch [out, in] -> [in, out]
    rope_heads: int | None = None  # undo HF rotate-half permutation over this many heads
    vocab_rows: bool = False  # dim 0 is the vocabulary (may be sliced)


_META_BLOCK = [  # (our sub-name, Meta sub-key, shard dim, transpose)
    ("attention/wq", "attention.wq.weight", 0, True),
    ("attention/wk", "attention.wk.weight", 0, True),
    ("attention/wv", "attention.wv.weight", 0, True),
    ("attention/wo", "attention.wo.weight", 1, True),
    ("feed_forward/w1", "feed_forward.w1.weight", 0, True),
    ("feed_forward/w3", "feed_forward.w3.weight", 0, True),
    ("feed_forward/w2", "feed_forward.w2.weight", 1, True),
    ("attention_norm/weight", "attention_norm.weight", None, False),
    ("ffn_norm/weight", "ffn_norm.weight", None, False),
]

_HF_BLOCK = [  # (our sub-name, HF sub-key, rope permutation)
    ("attention/wq", "self_attn.q_proj.weight", "q"),
    ("attention/wk", "self_attn.k_proj.weight", "k"),
    ("attention/wv", "self_attn.v_proj.weight", None),
    ("attention/wo", "self_attn.o_proj.weight", None),
    ("feed_forward/w1", "mlp.gate_proj.weight", None),
    ("feed_forward/w3", "mlp.up_proj.weight", None),
    ("feed_forward/w2", "mlp.down_proj.weight", None),
    ("attention_norm/weight", "input_layernorm.weight", None),
    ("ffn_norm/weight", "post_attention_layernorm.weight", None),
]


def _block_target(cfg: ModelConfig, i: int) -> str:
    """Model path of source block i (trunk blocks first, then head 0)."""
    return f"layers/{i}" if i < cfg.n_trunk_layers else f"heads/{i - cfg.n_trunk_layers}"


def meta_rules(cfg: ModelConfig) -> list[_Rule]:
    rules = [_Rule("tok_embeddings", "tok_embeddings.weight", shard_dim=1, vocab_rows=True)]
    sources = [f"layers.{i}" for i in range(cfg.n_trunk_layers + 1)]
    sources += [f"extra_heads.{j}" for j in range(cfg.n_future_tokens - 1)]
    targets = [_block_target(cfg, i) for i in range(cfg.n_trunk_layers + 1)]
    targets += [f"heads/{j + 1}" for j in range(cfg.n_future_tokens - 1)]
    for src, dst in zip(sources, targets):
        rules += [
            _Rule(f"{dst}/{name}", f"{src}.{key}", shard_dim=dim, transpose=t) for name, key, dim, t in _META_BLOCK
        ]
    rules += [
        _Rule("norm/weight", "norm.weight"),
        _Rule("output", "output.weight", shard_dim=0, transpose=True, vocab_rows=True),
    ]
    return rules


def hf_rules(cfg: ModelConfig, tied: bool) -> list[_Rule]:
    rules = [_Rule("tok_embeddings", "model.embed_tokens.weight", vocab_rows=True)]
    heads = {"q": cfg.n_heads, "k": cfg.kv_heads, None: None}
    for i in range(cfg.n_layers):
        rules += [
            _Rule(
                f"{_block_target(cfg, i)}/{name}",
                f"model.layers.{i}.{key}",
                transpose=not name.endswith("norm/weight"),
                rope_heads=heads[rope],
            )
            for name, key, rope in _HF_BLOCK
        ]
    rules += [
        _Rule("norm/weight", "model.norm.weight"),
        _Rule("output", "model.embed_tokens.weight" if tied else "lm_head.weight", transpose=True, vocab_rows=True),
    ]
    return rules


@dataclasses.dataclass
class _Layout:
    src: Path
    kind: str  # "meta" or "hf"
    cfg: ModelConfig
    files: list  # TorchFile / SafetensorsFile
    rules: list[_Rule]
    key_files: dict[str, list]  # source key -> files holding it (several for Meta model-parallel shards)


def _index_keys(files) -> dict[str, list]:
    key_files: dict[str, list] = {}
    for f in files:
        for k in f.shapes:
            key_files.setdefault(k, []).append(f)
    return key_files


def detect_layout(src: Path, vocab_size: int | None = None) -> _Layout:
    """Finds the checkpoint layout in ``src`` and the model config it implies."""
    if not src.is_dir():
        raise CheckpointError(
            f"{src}: not a directory; expected a Meta (params.json + consolidated*.pth) or "
            "Hugging Face (config.json + *.safetensors / pytorch_model*.bin) checkpoint directory"
        )
    meta_files = sorted(src.glob("consolidated*.pth"))
    hf_files = sorted(p for p in src.glob("*.safetensors") if p.name != VALUE_HEAD_FILE)
    hf_files = hf_files or sorted(src.glob("pytorch_model*.bin"))
    try:
        if (src / "params.json").is_file() and meta_files:
            files = [open_file(p) for p in meta_files]
            key_files = _index_keys(files)
            n_extra = len({m.group(1) for k in key_files if (m := re.match(r"extra_heads\.(\d+)\.", k))})
            params = json.loads((src / "params.json").read_text())
            inferred = {"n_future_tokens": params.get("n_future_tokens") or n_extra + 1}
            if params.get("vocab_size", -1) in (-1, None) and "tok_embeddings.weight" in key_files:
                inferred["vocab_size"] = files[0].shapes["tok_embeddings.weight"][0]
            cfg = ModelConfig.from_params_json(src / "params.json", **inferred)
            if cfg.n_future_tokens != n_extra + 1:
                raise CheckpointError(
                    f"{src / 'params.json'}: n_future_tokens={cfg.n_future_tokens} but the "
                    f"checkpoint has {n_extra} extra_heads (expected {cfg.n_future_tokens - 1})"
                )
            kind, rules = "meta", meta_rules(cfg)
        elif (src / "config.json").is_file() and hf_files:
            files = [open_file(p) for p in hf_files]
            key_files = _index_keys(files)
            hf = json.loads((src / "config.json").read_text())
            tied = bool(hf.get("tie_word_embeddings", False)) or "lm_head.weight" not in key_files
            cfg = ModelConfig.from_hf_config(src / "config.json")
            kind, rules = "hf", hf_rules(cfg, tied)
        else:
            found = sorted(p.name for p in src.iterdir())[:20]
            raise CheckpointError(
                f"{src}: no checkpoint layout recognised (found {found}); expected params.json + consolidated*.pth "
                "(Meta) or config.json + *.safetensors / pytorch_model*.bin (Hugging Face)"
            )
    except (SourceError, ModelConfigError) as e:
        raise CheckpointError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{src}: invalid JSON config ({e})") from None
    if vocab_size is not None:
        if vocab_size > cfg.vocab_size:
            raise CheckpointError(f"vocab_size={vocab_size} exceeds the checkpoint's vocabulary of {cfg.vocab_size}")
        cfg = cfg.replace(vocab_size=vocab_size)
    return _Layout(src, kind, cfg, files, rules, key_files)


def _source_shape(layout: _Layout, rule: _Rule) -> tuple[int, ...]:
    shapes = [f.shapes[rule.source] for f in layout.key_files[rule.source]]
    shape = list(shapes[0])
    if rule.shard_dim is not None and len(shapes) > 1:
        shape[rule.shard_dim] = sum(s[rule.shard_dim] for s in shapes)
    return tuple(shape)


def _target_shape(layout: _Layout, rule: _Rule) -> tuple[int, ...]:
    shape = list(_source_shape(layout, rule))
    if rule.vocab_rows:
        shape[0] = min(shape[0], layout.cfg.vocab_size)
    return tuple(reversed(shape)) if rule.transpose else tuple(shape)


def check_layout(layout: _Layout, expected: dict[str, tuple[int, ...]]) -> None:
    """Every rule's source present, no unused source tensor, every shape as the model expects."""
    used = {r.source for r in layout.rules}

    def torch_shape(r):
        return tuple(reversed(expected[r.target])) if r.transpose else expected[r.target]

    problems = [
        f"missing weight {r.source} (expected torch shape {torch_shape(r)}, for {r.target})"
        for r in layout.rules
        if r.source not in layout.key_files
    ]
    problems += [
        f"unexpected weight {k} (shape {layout.key_files[k][0].shapes[k]})"
        for k in sorted(layout.key_files)
        if k not in used and not _IGNORED_SOURCE_KEYS.search(k)
    ]
    for r in layout.rules:
        if r.source in layout.key_files and _target_shape(layout, r) != expected[r.target]:
            problems.append(
                f"weight {r.source}: checkpoint gives shape {_target_shape(layout, r)} for {r.target}, "
                f"model expects {expected[r.target]}"
            )
    if problems:
        raise CheckpointError(
            f"{layout.src}: the {layout.kind} checkpoint does not match its config "
            f"({layout.cfg.n_layers} layers, dim {layout.cfg.dim}, "
            f"{layout.cfg.n_future_tokens} heads):\n  " + "\n  ".join(problems)
        )


def _transform(x: np.ndarray, rule: _Rule, vocab_size: int) -> np.ndarray:
    """Vocabulary slice, RoPE un-permutation and transpose of one (full) source tensor; returns a C copy."""
    if rule.vocab_rows:
        x = x[:vocab_size]
    if rule.rope_heads:
        n, rows, cols = rule.rope_heads, x.shape[0], x.shape[1]
        x = x.reshape(n, 2, rows // n // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
    return np.array(x.T if rule.transpose else x, order="C", copy=True)


def _read(layout: _Layout, rule: _Rule) -> np.ndarray:
    files = layout.key_files[rule.source]
    if rule.shard_dim is None or len(files) == 1:  # one copy, straight from the memory map
        return files[0].read(rule.source, lambda x: _transform(x, rule, layout.cfg.vocab_size))
    full = np.concatenate([f.read(rule.source) for f in files], axis=rule.shard_dim)
    return _transform(full, rule, layout.cfg.vocab_size)


def _converted(layout: _Layout, dtype) -> Iterator[tuple[str, np.ndarray]]:
    for rule in layout.rules:
        x = _read(layout, rule)
        yield rule.target, (x if dtype is None else x.astype(dtype))
    kernel, bias = _value_head(layout)
    yield "value_head/kernel", kernel if dtype is None else kernel.astype(dtype)
    yield "value_head/bias", bias if dtype is None else bias.astype(dtype)


def _value_head(layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel [dim, 1], bias [1])`` from ``value_head.safetensors`` beside the weights (written by
    ``wmtp_jax.checkpoint.export``), else zeros (float32)."""
    path = layout.src / VALUE_HEAD_FILE
    if not path.is_file():
        return np.zeros((layout.cfg.dim, 1), np.float32), np.zeros((1,), np.float32)
    f = SafetensorsFile(path)
    if "value_head.hidden.weight" in f.shapes:
        raise CheckpointError(
            f"{path}: an MLP value head (a critic's critic.head=mlp); conversion reads linear heads only, so use the "
            "Orbax model directory the critic run wrote (its final/)"
        )
    expected = {"value_head.weight": (1, layout.cfg.dim), "value_head.bias": (1,)}
    if f.shapes != expected:
        raise CheckpointError(f"{path}: expected tensors {expected}, found {f.shapes}")
    return f.read("value_head.weight", lambda x: np.array(x.T, order="C")), f.read("value_head.bias")


def convert_torch_checkpoint(
    src_dir,
    dst_dir,
    *,
    vocab_size: int | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ModelConfig:
    """Converts a Meta or Hugging Face torch checkpoint directory into an Orbax model directory.

    Streams one tensor at a time (memory-mapped read -> transform -> Orbax partial save), so peak host
    memory is about the largest single tensor, not the checkpoint. The value head is read from
    ``value_head.safetensors`` beside the weights when an export wrote one, else written as zeros.

    Args:
      src_dir: Meta (``params.json`` + ``consolidated[.NN].pth``) or Hugging Face (``config.json`` +
        ``*.safetensors`` / ``pytorch_model*.bin``) directory.
      dst_dir: output directory (``model_config.json`` + ``params/``), readable by ``load_model``.
      vocab_size: keep only the first ``vocab_size`` rows of the embedding and output (CodeLlama's 32016 -> 32000).
      dtype: "float32" or "bfloat16" to cast the stored weights; None keeps the source dtype.
      overwrite: replace an existing ``dst_dir``.
      progress: show a tqdm progress bar.
    Returns:
      The ``ModelConfig`` written to ``dst_dir``.
    Raises:
      CheckpointError: unknown layout, unreadable or non-checkpoint file (named), missing / unexpected /
        mis-shaped weights (named with both shapes), or an existing ``dst_dir`` without ``overwrite``.
    """
    src, dst = Path(src_dir), Path(dst_dir).absolute()  # Orbax requires absolute paths
    if dtype not in _STORAGE_DTYPES:
        raise CheckpointError(f"dtype={dtype!r}: expected one of {list(_STORAGE_DTYPES)}")
    layout = detect_layout(src, vocab_size)
    check_layout(layout, flat_param_shapes(layout.cfg))
    if dst.exists():
        if not overwrite:
            raise CheckpointError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    params_dir = dst / PARAMS_DIR
    total_bytes = 0
    bar = tqdm(total=len(layout.rules) + 2, desc=f"convert {layout.kind} -> orbax", unit="tensor", disable=not progress)
    for name, array in _converted(layout, _STORAGE_DTYPES[dtype]):
        ocp_partial.save(params_dir, unflatten({name: array}))
        total_bytes += array.nbytes
        bar.set_postfix_str(f"{total_bytes / 2**20:,.0f} MiB")
        bar.update()
        del array
    bar.close()
    ocp_partial.finalize(params_dir)
    write_config(dst, layout.cfg, source={"path": str(src.resolve()), "layout": layout.kind})
    return layout.cfg


def is_orbax_model_dir(path) -> bool:

    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / PARAMS_DIR).is_dir()


def source_fingerprint(checkpoint: Path, **options) -> dict:
    """What a cached conversion was made from: name, size and modification time of every file of the torch
    checkpoint directory, and the conversion options that change the result (``vocab_size``, ``dtype``)."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in checkpoint.iterdir() if p.is_file())
    return {"files": [list(f) for f in files], **{k: v for k, v in sorted(options.items()) if v is not None}}


def ensure_orbax(checkpoint, cache_dir, **convert_kwargs) -> Path:
    """An Orbax model directory for ``checkpoint``: itself if already converted, else a cached conversion.

    The cache entry is ``cache_dir/<name>-<hash of the absolute source path and the options>``. It is reused only
    when its recorded ``source_fingerprint`` matches the checkpoint's files and options; a changed checkpoint, or a
    conversion interrupted before ``model_config.json`` was written, is converted again (and says so).
    """
    import hashlib
    import sys

    checkpoint = Path(checkpoint)
    if is_orbax_model_dir(checkpoint):
        return checkpoint
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: checkpoint directory not found")
    options = {k: v for k in ("vocab_size", "dtype") if (v := convert_kwargs.get(k)) is not None}
    fingerprint = source_fingerprint(checkpoint, **options)
    identity = json.dumps({"path": str(checkpoint.resolve()), **options}, sort_keys=True)
    dst = Path(cache_dir) / f"{checkpoint.name}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"
    if is_orbax_model_dir(dst):
        written = json.loads((dst / CONFIG_FILE).read_text())
        if written.get("source", {}).get("fingerprint") == fingerprint:
            return dst
        print(f"{dst}: {checkpoint} changed since it was converted; converting again", file=sys.stderr)
    convert_torch_checkpoint(checkpoint, dst, overwrite=True, **convert_kwargs)
    written = json.loads((dst / CONFIG_FILE).read_text())
    written["source"]["fingerprint"] = fingerprint
    atomic_write_text(dst / CONFIG_FILE, json.dumps(written, indent=2) + "\n")
    return dst


def peek_config(checkpoint, vocab_size: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a checkpoint directory without reading any weight: an Orbax model directory's
    ``model_config.json``, Meta's ``params.json`` or a Hugging Face ``config.json``. ``vocab_size`` slices as the
    conversion would. Raises CheckpointError naming the directory when none of the three is there."""

    src = Path(checkpoint)
    try:
        if is_orbax_model_dir(src):
            cfg = read_config(src)
        elif (src / "params.json").is_file():
            cfg = ModelConfig.from_params_json(src / "params.json")
        elif (src / "config.json").is_file():
            cfg = ModelConfig.from_hf_config(src / "config.json")
        else:
            raise CheckpointError(
                f"{src}: no model_config.json, params.json or config.json to read the model shape from"
            )
    except (ModelConfigError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{src}: {e}") from None
    return cfg.replace(vocab_size=vocab_size) if vocab_size else cfg
