"""Validation of a run config before anything is loaded or compiled: every problem is reported at once."""

from __future__ import annotations

import ast
import os

import jax
import ml_collections

from wmtp_jax import sharding
from wmtp_jax.model.config import _DTYPES, _REMAT_POLICIES, ATTENTION_IMPLS

EXPERIMENTS = ("forward", "baseline", "critic", "verifiable", "rho1", "ref_tuning", "eval", "rollout")
GENERATION_JOBS = ("eval", "rollout")


class ConfigError(ValueError):
    """One or more invalid config values; ``problems`` lists them (key, value, what is allowed)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


def _parse_value(text: str, current):
    """``text`` parsed as the type of ``current`` (bool, int, float, str, tuple); raises ValueError."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (tuple, list)):
        value = ast.literal_eval(text) if text.strip() else ()
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return value
    return text


def apply_overrides(c: ml_collections.ConfigDict, overrides: list[str]) -> list[str]:
    """Applies ``KEY=VALUE`` overrides (from ``--config.KEY=VALUE``); returns one problem per unknown key or
    value of the wrong type instead of stopping at the first."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            out.append(f"--config.{key}: expected --config.{key}=VALUE")
            continue
        node, parts = c, key.split(".")
        try:
            for part in parts[:-1]:
                node = node[part]
            current = node[parts[-1]]
        except (KeyError, AttributeError, TypeError):
            out.append(f"{key}: unknown config key")
            continue
        if hasattr(current, "items"):
            out.append(f"{key}: is a group of keys, not a value")
            continue
        try:
            node[parts[-1]] = _parse_value(text, current)
        except (ValueError, SyntaxError) as e:
            out.append(f"{key}={text!r}: expected a {type(current).__name__} ({e})")
    return out


def problems(c: ml_collections.ConfigDict, n_devices: int | None = None, n_processes: int | None = None) -> list[str]:
    """Every problem in ``c``, one line each, naming the key, the value and what is allowed."""
    out = []
    n_devices = jax.device_count() if n_devices is None else n_devices
    n_processes = jax.process_count() if n_processes is None else n_processes

    def get(key):
        value = c
        for part in key.split("."):
            value = value[part]
        return value

    def check(key, ok, expected):
        try:
            value = get(key)
        except (KeyError, AttributeError):
            out.append(f"{key}: missing from the config")
            return
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            out.append(f"{key}={value!r}: expected {expected}")

    def one_of(key, allowed):
        check(key, lambda v: v in allowed, f"one of {list(allowed)}")

    def positive(key, integer=True):
        check(key, lambda v: (isinstance(v, int) if integer else isinstance(v, (int, float))) and v > 0,
              "a positive " + ("integer" if integer else "number"))

    def fraction(key, lo=0.0, hi=1.0):
        check(key, lambda v: lo <= v <= hi, f"a number in [{lo}, {hi}]")

    one_of("experiment", EXPERIMENTS)
    from wmtp_jax.distributed import CLUSTERS

    one_of("distributed.cluster", tuple(CLUSTERS))
    check("distributed.num_processes", lambda v: isinstance(v, int) and v >= 0, "0 (one process / from the "
          "environment) or the number of processes")
    check("distributed.process_id", lambda v: isinstance(v, int) and -1 <= v and
          (c.distributed.num_processes == 0 or v < c.distributed.num_processes),
          "-1 (from the environment) or an id in [0, distributed.num_processes)")
    check("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    one_of("model.dtype", sorted(_DTYPES))
    one_of("model.param_dtype", sorted(_DTYPES))
    one_of("model.remat", _REMAT_POLICIES)
    if "scan_layers" in c.model:  # training and evaluation configs
        check("model.scan_layers", lambda v: isinstance(v, bool), "true or false")
        one_of("model.attention", ATTENTION_IMPLS)
        positive("model.attention_chunk")
    check("model.vocab_size", lambda v: isinstance(v, int) and v >= 0, "0 (keep) or a positive integer")
    if c.experiment in GENERATION_JOBS:
        if not c.model.build_micro:
            check("checkpoint", lambda v: bool(v) and os.path.exists(v),
                  "an existing Orbax model directory, training workdir, workdir/checkpoints/STEP or torch "
                  "checkpoint directory (set --config.checkpoint=PATH)")
    elif not c.model.build_micro and not c.model.get("init_from"):
        check("model.checkpoint", lambda v: bool(v) and os.path.isdir(v),
              "an existing torch or Orbax checkpoint directory (set --config.model.checkpoint=PATH)")
    if c.model.get("init_from"):
        check("model.init_from", lambda v: os.path.isfile(os.path.join(v, "model_config.json")),
              "an Orbax model directory with model_config.json (e.g. workdir/critic/final)")
    if c.tokenizer:
        check("tokenizer", os.path.isfile, "an existing SentencePiece .model file")
    try:
        data, fsdp, tensor = sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, n_devices)
    except sharding.MeshError as e:
        out.append(f"mesh=({c.mesh.data}, {c.mesh.fsdp}, {c.mesh.tensor}): {e}")
        data = fsdp = None
    if c.experiment in GENERATION_JOBS:
        out += _generation_problems(c, check, one_of, positive, fraction, data, fsdp)
    elif c.experiment != "forward":
        out += _training_problems(c, check, one_of, positive, fraction, data, fsdp, n_processes)
    return out


def _generation_problems(c, check, one_of, positive, fraction, data, fsdp) -> list[str]:
    from wmtp_jax.data.prepare import MBPP_SPLITS
    from wmtp_jax.eval.benchmarks import BENCHMARKS, MBPP_FORMATS

    out = []
    group = "eval" if c.experiment == "eval" else "rollout"
    if group == "eval":
        check("eval.benchmarks", lambda v: len(v) > 0 and set(v) <= set(BENCHMARKS),
              f"a non-empty tuple of {list(BENCHMARKS)}")
        one_of("eval.mbpp_format", MBPP_FORMATS)
        check("eval.k", lambda v: len(v) > 0 and all(isinstance(k, int) and 1 <= k <= c.eval.n_samples for k in v),
              f"a non-empty tuple of integers in [1, eval.n_samples={c.eval.n_samples}]")
        check("eval.speculative", lambda v: not v or c.eval.temperature == 0,
              "False unless eval.temperature=0 (self-speculative decoding is greedy only)")
        positive("eval.bootstrap")
        paths = "eval.codecontests"
    else:
        one_of("rollout.source", BENCHMARKS)
        one_of("rollout.mbpp_split", tuple(MBPP_SPLITS))
        positive("rollout.max_length")
        paths = "rollout.codecontests"
    check(paths, lambda v: all(os.path.isfile(p) for p in v), "a tuple of existing JSONL files")
    for key in ("n_samples", "max_new_tokens", "batch_size", "memory_mb"):
        positive(f"{group}.{key}")
    positive(f"{group}.timeout_s", integer=False)
    check(f"{group}.limit", lambda v: isinstance(v, int) and v >= 0, "0 (all problems) or a positive integer")
    check(f"{group}.temperature", lambda v: v >= 0, "a non-negative number (0 = greedy)")
    check(f"{group}.top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    check(f"{group}.prompt_buckets", lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
          "a non-empty tuple of positive prompt lengths")
    b = c[group].batch_size
    if data is not None and isinstance(b, int) and b % (data * fsdp):
        out.append(f"{group}.batch_size={b}: must be a multiple of the {data * fsdp} data-parallel devices "
                   "(mesh data x fsdp)")
    return out


def _training_problems(c, check, one_of, positive, fraction, data, fsdp, n_processes) -> list[str]:
    out = []
    for key in ("train.num_steps", "train.batch_size", "train.grad_accum_steps", "train.ce_chunk",
                "train.log_every", "train.eval_batches", "train.max_nonfinite_steps", "checkpoint.every_steps",
                "checkpoint.keep"):
        positive(key)
    for key in ("train.learning_rate", "weighting.beta"):
        positive(key, integer=False)
    check("train.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    for key in ("train.end_lr_fraction", "train.b1", "train.b2", "weighting.gamma", "weighting.gae_lambda",
                "weighting.ema_decay", "weighting.rho1_ratio"):
        fraction(key)
    check("train.weight_decay", lambda v: v >= 0, "a non-negative number")
    check("train.max_grad_norm", lambda v: v >= 0, "a non-negative number (0 = no clipping)")
    check("weighting.w_min", lambda v: 0 <= v <= c.weighting.w_max, "0 <= w_min <= weighting.w_max")
    one_of("weighting.value_loss", ("mse", "huber"))
    one_of("weighting.value_target", ("mc", "lambda"))
    one_of("weighting.rho1_mode", ("signed", "absolute"))
    one_of("weighting.rho1_select", ("hard", "soft"))
    one_of("weighting.rho1_normalize", ("selected", "valid"))
    one_of("data.strategy", ("correct", "all", "balanced", "curriculum", "pairs"))
    check("data.correct_ratio", lambda v: 0 < v < 1, "a number in (0, 1)")
    check("data.buckets", lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
          "a non-empty tuple of positive sequence lengths")
    check("data.num_workers", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    if not c.data.prepare_micro:
        for key in ("data.train",) + (("data.validation",) if c.data.validation else ()):
            check(key, lambda v: bool(v) and os.path.isfile(v) and os.path.isfile(_index_of(v)),
                  "a prepared .jsonl with its .index.npz beside it (scripts/prepare_data.py)")
    if c.weighting.rho1_reference_ce:
        check("weighting.rho1_reference_ce", lambda v: os.path.isfile(v + ".ref_ce.npy"),
              "the prefix of {prefix}.ref_ce.npy written by scripts/precompute_ref_ce.py")
    elif c.experiment == "rho1" and not c.model.build_micro:
        check("reference.checkpoint", lambda v: bool(v) and os.path.isdir(v),
              "the Rho-1 reference checkpoint directory (torch or Orbax)")
    b, accum = c.train.batch_size, c.train.grad_accum_steps
    if data is not None and isinstance(b, int) and isinstance(accum, int) and accum > 0:
        shards = data * fsdp
        if b % accum or (b // accum) % shards:
            out.append(f"train.batch_size={b}: must split into train.grad_accum_steps={accum} micro-batches "
                       f"that each divide over the {shards} data-parallel devices (mesh data x fsdp)")
        if b % n_processes:
            out.append(f"train.batch_size={b}: must be divisible by the {n_processes} processes")
    return out


def _index_of(jsonl: str) -> str:
    return jsonl.removesuffix(".jsonl") + ".index.npz"


def layout_options(c: ml_collections.ConfigDict) -> dict:
    """``load_model`` overrides for how blocks run (scan, attention kernel) — shared by policy and reference."""
    return dict(scan_layers=c.model.scan_layers, attention=c.model.attention, attention_chunk=c.model.attention_chunk)


def model_options(c: ml_collections.ConfigDict) -> dict:
    """``load_model`` overrides of the policy: dtypes, remat and layout from ``c.model``."""
    return dict(dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat, **layout_options(c))


def validate(c: ml_collections.ConfigDict, n_devices: int | None = None) -> None:
    found = problems(c, n_devices)
    if found:
        raise ConfigError(found)
