"""The run config tree: one frozen, typed dataclass per config section, parsed once from the user's config.

Users write ``ml_collections`` configs (``configs/*.py``, ``--config.KEY=VALUE`` overrides, field references);
``wmtp_jax.main`` parses the result once with ``parse`` into a ``RunConfig`` and hands that to the job. Below
``main`` only the typed tree is read. Each section's defaults are declared once, here or in the room that owns
the section (``train.step.StepConfig``, ``data.sampling.SamplingConfig``, ...), and ``configs/base.py`` builds
its ``ConfigDict`` sections from them (``section_dict``). A key that no section declares is an error naming the
config file and the key. The free-form maps (``mlflow.tags``, ``study.arms``) take any key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import ml_collections

from wmtp_jax.checkpoint.train_state import CheckpointConfig
from wmtp_jax.data.sampling import SamplingConfig
from wmtp_jax.eval.protocols import PROTOCOLS
from wmtp_jax.model.lora import LoraConfig
from wmtp_jax.schema import ConfigError, Section, frozen
from wmtp_jax.train.hooks import EarlyStoppingConfig
from wmtp_jax.train.loop import LoopConfig
from wmtp_jax.train.objectives import CriticConfig, WeightingConfig
from wmtp_jax.train.step import OptimizerConfig, StepConfig


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """``mesh``: devices per logical axis ("data", "fsdp", "tensor"); one -1 takes the remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    """``model``: the policy to load and how its blocks run."""

    checkpoint: str = ""  # the model: torch (Meta / HF) or Orbax model directory (eval: also a workdir)
    init_from: str = ""  # Orbax model directory that overrides checkpoint (e.g. critic -> verifiable)
    cache_dir: str = "artifacts/converted"  # torch checkpoints are converted here once
    vocab_size: int = 0  # > 0: slice a larger vocabulary (CodeLlama 32016 -> 32000)
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"  # master weights
    remat: str = "full"  # none | full | dots | dots_with_no_batch_dims
    scan_layers: bool = True  # trunk as one lax.scan, heads as one lax.map over the stacked blocks
    attention: str = "chunked"  # xla | chunked (exact, bounded memory, any backend) | cudnn (NVIDIA flash)
    attention_chunk: int = 512  # queries per chunk for "chunked"
    build_micro: bool = False  # build the micro checkpoints if missing (":micro")
    # LoRA adapters (rank 0 = full fine-tuning; the value head stays fully trainable); base_dtype nf4 / int8 = QLoRA
    lora: LoraConfig = LoraConfig()


@dataclasses.dataclass(frozen=True)
class DistributedConfig(Section):
    """``distributed``: JAX's multi-controller runtime; all empty = one process, or the environment's
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``."""

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    cluster: str = ""  # auto | slurm | ompi | mpi4py | k8s


@dataclasses.dataclass(frozen=True)
class StorageConfig(Section):
    """``storage``: any model, reference, data or tokenizer path may be ``s3://bucket/key``, mirrored once into
    ``cache_dir`` (keyed by ETag); ``remote_workdir=s3://...``: checkpoints uploaded as committed, ``final/`` and
    results at the end, and a fresh node resumes from the newest complete remote checkpoint. Credentials come
    from the environment or the instance role only."""

    cache_dir: str = "artifacts/remote"
    endpoint_url: str = ""
    remote_workdir: str = ""


@dataclasses.dataclass(frozen=True)
class MlflowConfig(Section):
    """``mlflow``: where runs are tracked (process 0 only; secrets never logged)."""

    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else a local store under the workdir
    project: str = "wmtp"
    experiment_name: str = ""  # "" = {project}/{objective}/{dataset}
    artifact_location: str = ""  # "" = the server's default ({workdir}/mlartifacts for the local store)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # set on every run; any key
    parent_run_id: str = ""  # set by a study: each arm is a nested run of the study's run
    run_name: str = ""


@dataclasses.dataclass(frozen=True)
class ReferenceConfig(Section):
    """``reference``: the frozen Rho-1 reference (torch or Orbax; ``n_future_tokens`` = 1, same tokenizer)."""

    checkpoint: str = ""
    dtype: str = "bfloat16"  # compute and storage dtype of the frozen reference; nf4 / int8: quantised


@dataclasses.dataclass(frozen=True)
class DataConfig(SamplingConfig):
    """``data``: the prepared training data, how records are drawn (the ``SamplingConfig`` keys: strategy,
    curriculum bins and schedule, difficulty range) and how batches are padded or packed."""

    train: str = ""  # prepared {split}.jsonl (its {split}.index.npz beside it)
    validation: str = ""  # prepared validation jsonl ("" = no validation loss)
    prepare_micro: str = ""  # "mbpp", "labelled" or "synthetic": prepare shipped / generated data into cache_dir
    cache_dir: str = "artifacts/data"
    buckets: tuple[int, ...] = (512, 1024, 2048)  # padded lengths; a batch uses the smallest that fits
    pack: bool = False  # first-fit packing into rows of max(buckets) tokens (train.batch_tokens needs it)
    num_workers: int = 0  # Grain worker processes


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig, StepConfig, OptimizerConfig):
    """``train``: the loop (``LoopConfig``), the step (``StepConfig``) and the optimizer (``OptimizerConfig``)
    keys, and ``early_stopping``."""

    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()

    def problems(self, prefix: str = "train") -> list[str]:
        found = StepConfig.problems(self, prefix) + OptimizerConfig.problems(self, prefix)
        found += LoopConfig.problems(self, prefix)
        return found + self.early_stopping.problems(f"{prefix}.early_stopping")


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """``eval``: benchmarks, sampling and sandbox settings of the eval job and of the evaluation at the end of a
    training run (``train.eval_at_end``)."""

    # also "synthetic"; HumanEval+ reuses HumanEval's completions (the same prompts) when both are evaluated
    benchmarks: tuple[str, ...] = ("mbpp", "humaneval", "humaneval_plus", "mbpp_plus", "codecontests")
    # a named set of the sampling keys below (PROTOCOLS, docs/evaluation.md); explicit eval.* keys override it
    protocol: str = "greedy"
    mbpp_format: str = "3shot"  # 3shot (lm-evaluation-harness) | zeroshot (bigcode docstring)
    # the published parquet shards of the test split (private and generated tests; globs allowed)
    codecontests: tuple[str, ...] = ("data/code_contests/test-*.parquet",)
    limit: int = 0  # > 0: only the first N problems of each benchmark (recorded)
    n_samples: int = 1  # completions per problem
    k: tuple[int, ...] = (1,)  # pass@k for each k <= n_samples
    temperature: float = 0.0  # 0 = greedy
    # one temperature per k (n_samples drawn at each distinct one); () = `temperature` for every k
    k_temperatures: tuple[float, ...] = ()
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8  # generation rows at once (a multiple of the data-parallel devices)
    speculative: bool = False  # self-speculative decoding with the MTP heads (greedy only)
    prompt_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    timeout_s: float = 10.0  # per program
    memory_mb: int = 1024  # per program (address space)
    bootstrap: int = 1000  # resamples for the pass@k 95% interval


@dataclasses.dataclass(frozen=True)
class ExportConfig(Section):
    """``export``: ``final/`` also as a Hugging Face LlamaForCausalLM in ``{workdir}/final_hf`` (``hf``; head
    ``hf_head``'s path of an MTP model); ``merge_lora=False``: a LoRA run's ``final/`` holds its adapters and the
    path of its base (``adapter_config.json``)."""

    hf: bool = False
    hf_head: int = 1
    merge_lora: bool = True


@dataclasses.dataclass(frozen=True)
class RolloutConfig(Section):
    """``rollout``: sample completions for training problems, run them against the problem's tests and write
    Alpaca JSONL with ``is_correct`` (the critic's data)."""

    source: str = "mbpp"  # any benchmark with tests: mbpp | humaneval | codecontests
    mbpp_split: str = "train"  # MBPP split (train = task ids 601-974)
    codecontests: tuple[str, ...] = ()  # CodeContests JSONL files; () = the shipped sample
    limit: int = 0  # > 0: only the first N problems
    n_samples: int = 8  # completions per problem
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8
    prompt_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
    max_length: int = 2048  # records longer than this (tokens) are filtered, and counted
    timeout_s: float = 10.0
    memory_mb: int = 1024
    out_dir: str = ""  # "" = {workdir}/rollouts
    split_name: str = "train"


@dataclasses.dataclass(frozen=True)
class ForwardConfig(Section):
    """``forward``: the prompts whose next token each head predicts."""

    prompts: tuple[str, ...] = ("def fibonacci(n):\n", "import numpy as np\n\ndef mean(xs):")


@dataclasses.dataclass(frozen=True)
class ArmConfig(Section):
    """One ``study.arms`` entry: a training ``config`` (``configs/{config}.py``), ``overrides`` (``KEY=VALUE``;
    ``{arm}`` in a value is that arm's ``final/`` of the same seed), ``grid`` (``KEY=V1,V2,...``: one arm per
    combination) and ``compare`` (False for a stage that only feeds another arm)."""

    config: str = ""
    overrides: tuple[str, ...] = ()
    grid: tuple[str, ...] = ()
    compare: bool = True


@dataclasses.dataclass(frozen=True)
class StudyConfig(Section):
    """``study``: the arms, seeds and statistics of a study (``configs/study.py``)."""

    name: str = "weighting"
    baseline: str = "baseline"  # every other compared arm is compared with this one
    seeds: tuple[int, ...] = (0, 1, 2)  # pooled per problem in the report
    common: tuple[str, ...] = ()  # KEY=VALUE overrides for every arm (model, data, steps, ...)
    arms: dict[str, ArmConfig] = dataclasses.field(default_factory=dict)  # any arm name
    print_commands: bool = False
    report_only: bool = False
    bootstrap: int = 1000  # paired bootstrap resamples
    flips: int = 10_000  # Monte-Carlo sign flips when the exact test is too large
    register_alias: str = ""  # e.g. "candidate": register the best arm's final/ in the MLflow model registry
    registered_model: str = ""  # "" = {mlflow.project}-{study.name}


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """The whole run: what every job shares, then the sections of the job (None where the config has none)."""

    job: str = "train"  # train | eval | rollout | forward | study (training configs also set `objective`)
    preset: str = "default"
    workdir: str = "workdir/baseline"
    seed: int = 0
    tokenizer: str = ""  # "" = the shipped LLaMA tokenizer
    mesh: MeshConfig = MeshConfig()
    model: ModelSection = ModelSection()
    distributed: DistributedConfig = DistributedConfig()
    storage: StorageConfig = StorageConfig()
    mlflow: MlflowConfig = MlflowConfig()
    # training
    objective: str = ""  # baseline | critic | verifiable | rho1 | ref_tuning (wmtp_jax.train.objectives)
    dry_run: bool = False  # True: compile the step from abstract shapes, print per-device memory and FLOPs, exit
    critic: CriticConfig | None = None
    reference: ReferenceConfig | None = None
    data: DataConfig | None = None
    train: TrainConfig | None = None
    weighting: WeightingConfig | None = None
    checkpoint: CheckpointConfig | None = None
    export: ExportConfig | None = None
    # the other jobs
    eval: EvalConfig | None = None
    rollout: RolloutConfig | None = None
    forward: ForwardConfig | None = None
    study: StudyConfig | None = None

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(dataclasses.asdict(self), indent=indent, default=str)


# maps whose keys are the user's own (``config.apply_overrides`` adds keys to them): mlflow.tags holds strings,
# a new study.arms entry starts from ArmConfig's defaults
FREE_FORM = {"mlflow.tags": None, "study.arms": dataclasses.asdict(ArmConfig())}
# keys that select a preset of their section's keys (``config.apply_overrides`` applies them first)
PRESETS = {"eval.protocol": PROTOCOLS}  # eval/protocols.py


def _section_type(annotation) -> type | None:
    """The Section class of a field's type (``X`` or ``X | None``), else None."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _build(cls: type, section, key: str, unknown: list[str]):
    """``cls`` from the mapping ``section`` (a ConfigDict or dict), recursing into nested sections; each key that
    no field declares is added to ``unknown`` (its full dotted name)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # declaration order: problems in a stable order
    unknown += [f"{key}.{name}" if key else name for name in section if name not in names]
    values = {}
    for name in names:
        if name not in section:
            continue
        value, full = section[name], f"{key}.{name}" if key else name
        nested = _section_type(hints[name])
        if full in FREE_FORM:
            item = typing.get_args(hints[name])[1]
            values[name] = {
                str(k): _build(item, v, f"{full}.{k}", unknown) if _section_type(item) else str(v)
                for k, v in (value or {}).items()
            }
        elif nested is not None and hasattr(value, "keys"):
            values[name] = _build(nested, value, full, unknown)
        else:
            values[name] = frozen(value)
    return cls(**values)


def parse(c: ml_collections.ConfigDict, source: str = "the config") -> RunConfig:
    """The typed run config of ``c`` (field references resolved). Raises ``ConfigError`` naming ``source`` (the
    config file) and every key that no section declares."""
    resolved = c.copy_and_resolve_references() if isinstance(c, ml_collections.ConfigDict) else c
    unknown: list[str] = []
    run = _build(RunConfig, resolved, "", unknown)
    if unknown:
        raise ConfigError([f"{source}: unknown config key {key}" for key in unknown])
    return run


def section_dict(schema: type, **values: Any) -> ml_collections.ConfigDict:
    """A ``ConfigDict`` section holding the defaults of the typed section ``schema`` (``values`` replace some);
    ``configs/base.py`` builds every section this way, so a default is declared once."""
    return ml_collections.ConfigDict({**dataclasses.asdict(schema()), **values})
