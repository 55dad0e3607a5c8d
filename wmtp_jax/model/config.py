"""Model hyper-parameters under the names of Meta's ``params.json``.

Source: facebook/multi-token-prediction ``llama/model.py`` (``ModelArgs``) and the Hugging Face
``LlamaConfig``. ``docs/formulas.md`` ("Model layout") lists the 7B_1T_4 values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# remat name -> ``jax.checkpoint`` policy per block (None: no rematerialisation)
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
ATTENTION_IMPLS = ("xla", "chunked", "cudnn")

# params.json keys that carry no information for the forward pass (Meta's inference settings).
_IGNORED_META_KEYS = frozenset({"max_batch_size"})

# Hugging Face LlamaConfig name -> ModelConfig name.
_HF_TO_META = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "vocab_size": "vocab_size",
    "intermediate_size": "ffn_hidden_dim",
    "rms_norm_eps": "norm_eps",
    "rope_theta": "rope_theta",
    "max_position_embeddings": "max_seq_len",
}


class ModelConfigError(ValueError):
    """An invalid model hyper-parameter; the message names the field, its value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an MTP LLaMA (Meta ``ModelArgs`` names).

    Attributes:
      dim: model width d (4096 for 7B).
      n_layers: total transformer blocks, trunk + heads (32 for 7B_1T_4).
      n_heads: query heads; ``dim`` must be divisible by it.
      n_kv_heads: key/value heads for grouped-query attention; ``None`` means ``n_heads``.
      vocab_size: output vocabulary (32000 for the LLaMA tokenizer).
      multiple_of: FFN width is rounded up to a multiple of this (Meta rule, see ``hidden_dim``).
      ffn_dim_multiplier: optional scale of the FFN width (Meta rule).
      norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base frequency.
      max_seq_len: longest sequence the model is used with (RoPE tables are computed on the fly).
      n_future_tokens: number of parallel next-token heads H; 1 is a plain LLaMA.
      ffn_hidden_dim: explicit FFN width (Hugging Face ``intermediate_size``); ``None`` derives it
        from ``multiple_of`` / ``ffn_dim_multiplier`` as Meta does.
      dtype: compute dtype of matmuls ("float32" or "bfloat16"); norms and softmax run in float32.
      param_dtype: storage dtype of the parameters (master weights).
      remat: rematerialisation policy per block: "none", "full", "dots",
        "dots_with_no_batch_dims" (``jax.checkpoint_policies``).
      attention: "xla" (plain), "chunked" (exact, ``attention_chunk`` queries at a time: no ``[S, S]``
        score matrix per head for the whole sequence) or "cudnn" (flash attention on NVIDIA GPUs).
      attention_chunk: queries per chunk for "chunked".
      value_head_hidden: 0 = the value head is ``Linear(d -> 1)``; > 0 = an MLP ``d -> hidden -> 1`` (GELU,
        zero-initialised output), the critic's ``critic.head=mlp``.
      value_head_dropout: dropout rate on the MLP value head's hidden layer while training (``critic.head_dropout``).
      scan_layers: run the (always stacked) trunk blocks as one ``lax.scan`` and the heads as one ``lax.map``
        (one compiled block; buffers reused from layer to layer, which bounds activation memory on any
        backend); False unrolls them in Python (same result).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    n_future_tokens: int = 1
    ffn_hidden_dim: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    attention: str = "xla"
    attention_chunk: int = 512
    value_head_hidden: int = 0
    value_head_dropout: float = 0.0

    def __post_init__(self):
        self.validate()

    # ----------------------------------------------------------------- derived sizes
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: Meta's ``multiple_of * ceil(int(2 * 4d / 3 * mult) / multiple_of)``."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def n_trunk_layers(self) -> int:
        """Shared blocks before the heads: ``n_layers - n_future_tokens``."""
        return self.n_layers - self.n_future_tokens

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    # ----------------------------------------------------------------- validation
    def problems(self) -> list[str]:
        """Every invalid field, one message each (empty when the config is valid)."""
        out = []

        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{name}={value!r}: expected a positive integer")
                return False
            return True

        ok = {
            n: positive_int(n)
            for n in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len", "n_future_tokens")
        }
        if ok["dim"] and ok["n_heads"]:
            if self.dim % self.n_heads:
                out.append(f"dim={self.dim}: must be divisible by n_heads={self.n_heads}")
            elif self.head_dim % 2:
                out.append(f"dim={self.dim}: head_dim = dim / n_heads = {self.head_dim} must be even for RoPE")
        if self.n_kv_heads is not None:
            if not isinstance(self.n_kv_heads, int) or self.n_kv_heads < 1:
                out.append(f"n_kv_heads={self.n_kv_heads!r}: expected None or a positive integer")
            elif ok["n_heads"] and self.n_heads % self.n_kv_heads:
                out.append(f"n_kv_heads={self.n_kv_heads}: n_heads={self.n_heads} must be a multiple of it")
        if ok["n_layers"] and ok["n_future_tokens"] and self.n_layers < self.n_future_tokens:
            out.append(
                f"n_layers={self.n_layers}: must be >= n_future_tokens={self.n_future_tokens} "
                "(each future-token head is one block)"
            )
        if self.ffn_dim_multiplier is not None and not (
            isinstance(self.ffn_dim_multiplier, (int, float)) and self.ffn_dim_multiplier > 0
        ):
            out.append(f"ffn_dim_multiplier={self.ffn_dim_multiplier!r}: expected None or a positive number")
        if self.ffn_hidden_dim is not None and (not isinstance(self.ffn_hidden_dim, int) or self.ffn_hidden_dim < 1):
            out.append(f"ffn_hidden_dim={self.ffn_hidden_dim!r}: expected None or a positive integer")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            out.append(f"norm_eps={self.norm_eps!r}: expected a positive number")
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            out.append(f"rope_theta={self.rope_theta!r}: expected a positive number")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                out.append(f"{name}={getattr(self, name)!r}: expected one of {sorted(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            out.append(f"remat={self.remat!r}: expected one of {list(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLS:
            out.append(f"attention={self.attention!r}: expected one of {list(ATTENTION_IMPLS)}")
        if not isinstance(self.attention_chunk, int) or self.attention_chunk < 1:
            out.append(f"attention_chunk={self.attention_chunk!r}: expected a positive integer")
        if not isinstance(self.scan_layers, bool):
            out.append(f"scan_layers={self.scan_layers!r}: expected true or false")
        if not isinstance(self.value_head_hidden, int) or self.value_head_hidden < 0:
            out.append(f"value_head_hidden={self.value_head_hidden!r}: expected 0 (linear head) or a positive width")
        if not isinstance(self.value_head_dropout, int | float) or not 0 <= self.value_head_dropout < 1:
            out.append(f"value_head_dropout={self.value_head_dropout!r}: expected a rate in [0, 1)")
        return out

    def validate(self) -> None:
        """Raises ModelConfigError listing every invalid field."""
        problems = self.problems()
        if problems:
            raise ModelConfigError("invalid ModelConfig: " + "; ".join(problems))

    # ----------------------------------------------------------------- (de)serialisation
    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "dict") -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields - _IGNORED_META_KEYS)
        if unknown:
            raise ModelConfigError(
                f"{source}: unknown model config key(s) {unknown}; expected a subset of {sorted(fields)}"
            )
        kwargs = {k: v for k, v in values.items() if k in fields}
        try:
            return cls(**kwargs)
        except ModelConfigError as e:
            raise ModelConfigError(f"{source}: {e}") from None

    @classmethod
    def from_params_json(cls, path: str | os.PathLike, **overrides) -> ModelConfig:
        """Reads Meta's ``params.json``. ``overrides`` (e.g. ``vocab_size`` when the file says -1) win."""
        values = _read_json(path)
        values.update(overrides)
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_hf_config(cls, config: str | os.PathLike | dict[str, Any], **overrides) -> ModelConfig:
        """Reads a Hugging Face ``LlamaConfig`` (a ``config.json`` path or its dict); n_future_tokens = 1."""
        source = "config dict" if isinstance(config, dict) else str(config)
        hf = dict(config) if isinstance(config, dict) else _read_json(config)
        model_type = hf.get("model_type", "llama")
        if model_type != "llama":
            raise ModelConfigError(f"{source}: model_type={model_type!r}; only 'llama' checkpoints are supported")
        unsupported = {
            "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
            "rope_scaling": (hf.get("rope_scaling"), None),
            "attention_bias": (hf.get("attention_bias", False), False),
            "mlp_bias": (hf.get("mlp_bias", False), False),
        }
        for key, (value, expected) in unsupported.items():
            if value != expected:
                raise ModelConfigError(f"{source}: {key}={value!r} is not supported (expected {expected!r})")
        values = {meta: hf[name] for name, meta in _HF_TO_META.items() if name in hf}
        if "rope_theta" not in values and isinstance(hf.get("rope_parameters"), dict):
            values["rope_theta"] = hf["rope_parameters"].get("rope_theta", 10000.0)
        values["n_future_tokens"] = 1
        values.update(overrides)
        return cls.from_dict(values, source=source)

    def to_params_json(self) -> dict[str, Any]:
        """The Meta ``params.json`` view (architecture only, no dtypes)."""
        skip = {"dtype", "param_dtype", "remat", "scan_layers", "attention", "attention_chunk"}
        if not self.value_head_hidden:  # Meta's params.json has no such key; only an MLP value head records it
            skip.add("value_head_hidden")
        if not self.value_head_dropout:
            skip.add("value_head_dropout")
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def _read_json(path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ModelConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def layout_options(model) -> dict:
    """``load_model`` overrides for how blocks run (scan, attention kernel), from a config's ``model`` section;
    shared by the policy and a frozen second model."""
    return dict(scan_layers=model.scan_layers, attention=model.attention, attention_chunk=model.attention_chunk)


def model_options(model) -> dict:
    """``load_model`` overrides of the policy (dtypes, remat and layout) from a config's ``model`` section."""
    return dict(dtype=model.dtype, param_dtype=model.param_dtype, remat=model.remat, **layout_options(model))
