"""Validation of a run config before anything is loaded or compiled: every problem is reported at once."""

from __future__ import annotations

import ast
import os

import jax
import ml_collections
from ml_collections.config_flags import config_path

from wmtp_jax import sharding
from wmtp_jax.model.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES
from wmtp_jax.schema import Checker

JOBS = (
    "train",
    "eval",
    "rollout",
    "forward",
    "study",
)  # what the run does; training configs also name an ``objective``
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
        try:
            current = config_path.get_value(key, c)
        except (KeyError, AttributeError, IndexError, ValueError):
            out.append(f"{key}: unknown config key")
            continue
        if hasattr(current, "items"):
            out.append(f"{key}: is a group of keys, not a value")
            continue
        try:
            config_path.set_value(key, c, _parse_value(text, current))
        except (ValueError, SyntaxError) as e:
            out.append(f"{key}={text!r}: expected a {type(current).__name__} ({e})")
    return out


class _Checks(Checker):
    """``Checker`` over dotted keys of a whole config (``model.dtype``)."""

    def __init__(self, c):
        super().__init__(c)

    def _value(self, key: str):
        return config_path.get_value(key, self.values)


def problems(c: ml_collections.ConfigDict, n_devices: int | None = None, n_processes: int | None = None) -> list[str]:
    """Every problem in ``c``, one line each, naming the key, the value and what is allowed.

    Only collects: each typed section (``WeightingConfig``, ``StepConfig``, ``SamplingConfig``, ...) checks its
    own values; what is checked here spans sections (paths that must exist, batch and mesh sizes).
    """
    n_devices = jax.device_count() if n_devices is None else n_devices
    n_processes = jax.process_count() if n_processes is None else n_processes
    k = _Checks(c)
    k.one_of("job", JOBS)
    from wmtp_jax.distributed import CLUSTERS

    k.one_of("distributed.cluster", tuple(CLUSTERS))
    k.check(
        "distributed.num_processes",
        lambda v: isinstance(v, int) and v >= 0,
        "0 (one process / from the environment) or the number of processes",
    )
    k.check(
        "distributed.process_id",
        lambda v: (
            isinstance(v, int) and v >= -1 and (c.distributed.num_processes == 0 or v < c.distributed.num_processes)
        ),
        "-1 (from the environment) or an id in [0, distributed.num_processes)",
    )
    k.check("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    k.one_of("model.dtype", sorted(DTYPES))
    k.one_of("model.param_dtype", sorted(DTYPES))
    k.one_of("model.remat", REMAT_POLICIES)
    k.check("model.scan_layers", lambda v: isinstance(v, bool), "true or false")
    k.one_of("model.attention", ATTENTION_IMPLS)
    k.positive("model.attention_chunk")
    k.check("model.vocab_size", lambda v: isinstance(v, int) and v >= 0, "0 (keep) or a positive integer")
    if c.job in GENERATION_JOBS:
        if not c.model.build_micro:
            k.check(
                "model.checkpoint",
                lambda v: bool(v) and os.path.exists(v),
                "an existing Orbax model directory, training workdir, workdir/checkpoints/STEP or torch "
                "checkpoint directory (set --config.model.checkpoint=PATH)",
            )
    elif not c.model.build_micro and not c.model.get("init_from"):
        k.check(
            "model.checkpoint",
            lambda v: bool(v) and os.path.isdir(v),
            "an existing torch or Orbax checkpoint directory (set --config.model.checkpoint=PATH)",
        )
    if c.model.get("init_from"):
        k.check(
            "model.init_from",
            lambda v: os.path.isfile(os.path.join(v, "model_config.json")),
            "an Orbax model directory with model_config.json (e.g. workdir/critic/final)",
        )
    if c.tokenizer:
        k.check("tokenizer", os.path.isfile, "an existing SentencePiece .model file")
    try:
        data, fsdp, _ = sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, n_devices)
    except sharding.MeshError as e:
        k.found.append(f"mesh=({c.mesh.data}, {c.mesh.fsdp}, {c.mesh.tensor}): {e}")
        data = fsdp = None
    if c.job in GENERATION_JOBS:
        _generation_problems(c, k, data, fsdp)
    elif c.job == "train":
        _training_problems(c, k, data, fsdp, n_processes)
    elif c.job == "study":
        _study_problems(c, k)
    return k.found


def _generation_problems(c, k: _Checks, data, fsdp, group: str | None = None) -> None:
    from wmtp_jax.data.prepare import MBPP_SPLITS
    from wmtp_jax.eval.benchmarks import BENCHMARKS, MBPP_FORMATS

    group = group or c.job
    if group == "eval":
        k.check(
            "eval.benchmarks",
            lambda v: len(v) > 0 and set(v) <= set(BENCHMARKS),
            f"a non-empty tuple of {list(BENCHMARKS)}",
        )
        k.one_of("eval.mbpp_format", MBPP_FORMATS)
        k.check(
            "eval.k",
            lambda v: len(v) > 0 and all(isinstance(x, int) and 1 <= x <= c.eval.n_samples for x in v),
            f"a non-empty tuple of integers in [1, eval.n_samples={c.eval.n_samples}]",
        )
        k.check(
            "eval.speculative",
            lambda v: not v or c.eval.temperature == 0,
            "False unless eval.temperature=0 (self-speculative decoding is greedy only)",
        )
        k.positive("eval.bootstrap")
        paths = "eval.codecontests"
    else:
        k.one_of("rollout.source", BENCHMARKS)
        k.one_of("rollout.mbpp_split", tuple(MBPP_SPLITS))
        k.positive("rollout.max_length")
        paths = "rollout.codecontests"
    uses_codecontests = "codecontests" in (c.eval.benchmarks if group == "eval" else (c.rollout.source,))
    if uses_codecontests:
        from wmtp_jax.eval.benchmarks import BenchmarkError, codecontests_files

        try:
            codecontests_files(c[group].codecontests)
        except BenchmarkError as e:
            k.found.append(f"{paths}={tuple(c[group].codecontests)!r}: {e}")
    for key in ("n_samples", "max_new_tokens", "batch_size", "memory_mb"):
        k.positive(f"{group}.{key}")
    k.positive(f"{group}.timeout_s", integer=False)
    k.check(f"{group}.limit", lambda v: isinstance(v, int) and v >= 0, "0 (all problems) or a positive integer")
    k.check(f"{group}.temperature", lambda v: v >= 0, "a non-negative number (0 = greedy)")
    k.check(f"{group}.top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    k.check(
        f"{group}.prompt_buckets",
        lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
        "a non-empty tuple of positive prompt lengths",
    )
    b = c[group].batch_size
    if data is not None and isinstance(b, int) and b % (data * fsdp):
        k.found.append(
            f"{group}.batch_size={b}: must be a multiple of the {data * fsdp} data-parallel devices (mesh data x fsdp)"
        )


def _study_problems(c, k: _Checks) -> None:
    """The study's own keys and its arms' structure; each arm's config is validated when the arm starts."""
    from wmtp_jax.study.runner import StudyError, expand

    k.check(
        "study.seeds",
        lambda v: len(v) > 0 and all(isinstance(s, int) and s >= 0 for s in v),
        "a non-empty tuple of non-negative integer seeds",
    )
    k.check("study.bootstrap", lambda v: isinstance(v, int) and v >= 1000, "at least 1000 resamples")
    k.check("study.flips", lambda v: isinstance(v, int) and v >= 10_000, "at least 10,000 sign flips")
    k.check("study.common", lambda v: all("=" in item for item in v), "a tuple of KEY=VALUE overrides")
    for name in c.study.arms:
        k.check(
            f"study.arms.{name}.config",
            lambda v: os.path.isfile(os.path.join("configs", f"{v}.py")),
            "the name of a training config in configs/ (e.g. baseline, rho1)",
        )
    try:
        specs = expand(c.study)
    except StudyError as e:
        k.found.append(str(e))
        return
    compared = [s.name for s in specs if s.compared]
    k.check("study.baseline", lambda v: v in compared, f"one of the compared arms {compared}")


def _training_problems(c, k: _Checks, data, fsdp, n_processes) -> None:
    from wmtp_jax.data.records import index_path
    from wmtp_jax.data.sampling import SamplingConfig
    from wmtp_jax.train.hooks import CheckpointConfig, EarlyStoppingConfig
    from wmtp_jax.train.loop import LoopConfig
    from wmtp_jax.train.objectives import OBJECTIVES, WeightingConfig
    from wmtp_jax.train.step import OptimizerConfig, StepConfig

    k.one_of("objective", tuple(OBJECTIVES))
    for section, name in (
        (StepConfig, "train"),
        (OptimizerConfig, "train"),
        (LoopConfig, "train"),
        (CheckpointConfig, "checkpoint"),
        (WeightingConfig, "weighting"),
    ):
        k.found += section.from_config(c[name]).problems(name)
    k.found += EarlyStoppingConfig.from_config(c.train.early_stopping).problems("train.early_stopping")
    from wmtp_jax.train.objectives import SECOND_MODEL_DTYPES, CriticConfig

    critic = CriticConfig.from_config(c.critic)
    k.found += critic.problems("critic")
    k.one_of("reference.dtype", SECOND_MODEL_DTYPES)
    if c.objective == "verifiable" and not c.model.get("init_from") and not critic.model and not critic.allow_untrained:
        k.found.append(
            "model.init_from='': the verifiable objective needs a trained critic; set model.init_from to stage 1's "
            "output (e.g. workdir/critic/final), critic.model to a separately trained value model, or "
            "critic.allow_untrained=True to start from a zero value head (every token weight then comes from the "
            "reward alone)"
        )
    if critic.model:
        k.check("critic.model", os.path.isdir, "an existing checkpoint directory (torch or Orbax) of the value model")
    if c.objective == "critic" and critic.train == "lora" and not c.model.lora.rank:
        k.found.append("critic.train='lora': set model.lora.rank > 0 (the adapters the critic trains)")
    if c.weighting.value_loss == "pairwise":
        k.check("data.strategy", lambda v: v == "pairs", "'pairs' with weighting.value_loss='pairwise'")
        k.check("data.pack", lambda v: not v, "False with weighting.value_loss='pairwise' (one sequence per row)")
        k.check(
            "train.grad_accum_steps",
            lambda v: v == 1,
            "1 with weighting.value_loss='pairwise' (micro-batches would split the pairs)",
        )
    if "lora" in c.model:
        from wmtp_jax.model.lora import LoraConfig

        k.found += LoraConfig.from_config(c.model.lora).problems("model.lora")
    if "export" in c:
        k.check("export.hf", lambda v: isinstance(v, bool), "true or false")
        k.positive("export.hf_head")
        k.check("export.merge_lora", lambda v: isinstance(v, bool), "true or false")
    if c.train.eval_every_steps or c.train.eval_at_end:
        _generation_problems(c, k, data, fsdp, group="eval")
    k.found += [f"data.{p}" for p in SamplingConfig.from_config(c.data).problems()]
    k.check(
        "data.buckets",
        lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
        "a non-empty tuple of positive sequence lengths",
    )
    k.check("data.num_workers", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    if not c.data.prepare_micro:
        for key in ("data.train",) + (("data.validation",) if c.data.validation else ()):
            k.check(
                key,
                lambda v: bool(v) and os.path.isfile(v) and index_path(v).is_file(),
                "a prepared .jsonl with its .index.npz beside it (scripts/prepare_data.py)",
            )
    if c.weighting.rho1_reference_ce:
        k.check(
            "weighting.rho1_reference_ce",
            lambda v: os.path.isfile(v + ".ref_ce.npy"),
            "the prefix of {prefix}.ref_ce.npy written by scripts/precompute_ref_ce.py",
        )
    elif c.objective == "rho1" and not c.model.build_micro:
        k.check(
            "reference.checkpoint",
            lambda v: bool(v) and os.path.isdir(v),
            "the Rho-1 reference checkpoint directory (torch or Orbax)",
        )
    if c.train.get("batch_tokens"):
        row = max(c.data.buckets) if len(c.data.buckets) else 0
        k.check("data.pack", bool, "True when train.batch_tokens > 0 (the budget is filled with packed rows)")
        k.check(
            "train.batch_tokens",
            lambda v: row > 0 and v % row == 0,
            f"a multiple of the packed row length max(data.buckets)={row}",
        )
    from wmtp_jax.train.loop import batch_rows

    b, accum = batch_rows(c), c.train.grad_accum_steps
    name = (
        f"train.batch_tokens={c.train.batch_tokens} ({b} rows)"
        if c.train.get("batch_tokens")
        else f"train.batch_size={b}"
    )
    if data is not None and isinstance(b, int) and isinstance(accum, int) and accum > 0:
        shards = data * fsdp
        if b % accum or (b // accum) % shards:
            k.found.append(
                f"{name}: must split into train.grad_accum_steps={accum} micro-batches "
                f"that each divide over the {shards} data-parallel devices (mesh data x fsdp)"
            )
        if b % n_processes:
            k.found.append(f"{name}: must be divisible by the {n_processes} processes")


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
