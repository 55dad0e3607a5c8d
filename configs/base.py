"""Defaults shared by every experiment. Each experiment file calls ``base.get_config(preset)`` and edits it.

Presets (the ``:NAME`` after the config path): "" = production (7B_1T_4 on a 4-GPU FSDP mesh; checkpoint and
data paths given on the command line), "micro" = the local stand-in (micro models built once under
``artifacts/micro``, shipped MBPP data and LLaMA tokenizer, all local devices, a few minutes on a laptop).
"""

import dataclasses

import ml_collections

MICRO_DIR = "artifacts/micro"


def common(preset: str = "") -> ml_collections.ConfigDict:
    """The keys every job shares (training, evaluation, rollouts): run identity, mesh, model, MLflow."""
    if preset not in ("", "default", "micro"):
        raise ValueError(f"unknown config preset {preset!r}; expected '' or 'micro'")
    c = ml_collections.ConfigDict()
    c.job = "train"  # train | eval | rollout | forward (training configs also set `objective`)
    c.preset = preset or "default"
    c.workdir = "workdir/baseline"
    c.seed = 0
    c.tokenizer = ""  # "" = the shipped LLaMA tokenizer

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # one -1 fills the devices

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = ""  # the model: torch (Meta / HF) or Orbax model directory (eval: also a workdir)
    c.model.init_from = ""  # Orbax model directory that overrides checkpoint (e.g. critic -> verifiable)
    c.model.cache_dir = "artifacts/converted"  # torch checkpoints are converted here once
    c.model.vocab_size = 0  # > 0: slice a larger vocabulary (CodeLlama 32016 -> 32000)
    c.model.dtype = "bfloat16"  # compute dtype
    c.model.param_dtype = "float32"  # master weights
    c.model.remat = "full"  # none | full | dots | dots_with_no_batch_dims
    c.model.scan_layers = True  # trunk as one lax.scan, heads as one lax.map over the stacked blocks
    c.model.attention = "chunked"  # xla | chunked (exact, bounded memory, any backend) | cudnn (NVIDIA flash)
    c.model.attention_chunk = 512  # queries per chunk for "chunked"
    c.model.build_micro = False  # build the micro checkpoints if missing (":micro")

    # several processes (hosts): JAX's multi-controller runtime; all empty = one process, or the environment's
    # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; cluster: auto | slurm | ompi | mpi4py | k8s
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1, cluster=""))

    c.mlflow = ml_collections.ConfigDict()
    c.mlflow.tracking_uri = ""  # "" = $MLFLOW_TRACKING_URI, else a local store under the workdir
    c.mlflow.experiment_name = "wmtp"
    c.mlflow.run_name = ""

    if preset == "micro":
        c.model.checkpoint = f"{MICRO_DIR}/mtp_meta"
        c.model.build_micro = True
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.model.scan_layers = False
        c.model.attention = "xla"
    return c


def section(schema) -> ml_collections.ConfigDict:
    """A config section holding the defaults of a typed section (a frozen dataclass of ``wmtp_jax``)."""
    return ml_collections.ConfigDict(dataclasses.asdict(schema()))


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The training defaults; each experiment file sets ``objective`` (baseline | critic | verifiable | rho1 |
    ref_tuning, see ``wmtp_jax.train.objectives``) and edits the rest."""
    from wmtp_jax.train.hooks import CheckpointConfig
    from wmtp_jax.train.objectives import WeightingConfig

    c = common(preset)
    c.objective = "baseline"

    c.reference = ml_collections.ConfigDict()
    c.reference.checkpoint = ""  # Rho-1 reference (torch or Orbax); n_future_tokens = 1, same tokenizer
    c.reference.dtype = "bfloat16"  # compute and storage dtype of the frozen reference

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # prepared {split}.jsonl (its {split}.index.npz beside it)
    c.data.validation = ""  # prepared validation jsonl ("" = no validation loss)
    c.data.prepare_micro = ""  # ":micro": "mbpp" or "labelled" -> prepare shipped data into cache_dir
    c.data.cache_dir = "artifacts/data"
    c.data.strategy = "correct"  # correct | all | balanced | curriculum | pairs
    c.data.correct_ratio = 0.5  # balanced
    c.data.repeat = False  # balanced: allow repeats within an epoch
    c.data.curriculum_correct_only = False
    c.data.buckets = (512, 1024, 2048)  # padded lengths; a batch uses the smallest that fits
    c.data.pack = False  # first-fit packing into rows of max(buckets) tokens
    c.data.num_workers = 0  # Grain worker processes

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.batch_size = 8  # global, in sequences
    c.train.grad_accum_steps = 1
    c.train.learning_rate = 1e-5
    c.train.warmup_steps = 50
    c.train.end_lr_fraction = 0.1
    c.train.weight_decay = 0.1
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.max_grad_norm = 1.0
    c.train.ce_chunk = 256  # positions per chunk of the cross-entropy
    c.train.head_weights = ()  # per-head loss weights; () = 1 for every head
    c.train.log_every = 1
    c.train.eval_batches = 4  # validation batches at every checkpoint
    c.train.max_nonfinite_steps = 5  # consecutive skipped (non-finite) updates before the run stops
    c.train.peak_flops_per_device = 0.0  # for MFU; 0 = look up the device kind (A100, H100, H200)

    # token weights and the value loss: every key, its default and its meaning are those of WeightingConfig
    # (wmtp_jax/train/objectives.py), so a knob is declared once
    c.weighting = section(WeightingConfig)
    # checkpoint.every_steps, .keep (the last N, plus the best by validation loss), .async_save: CheckpointConfig
    c.checkpoint = section(CheckpointConfig)

    if preset == "micro":
        c.reference.checkpoint = f"{MICRO_DIR}/reference_hf"
        c.reference.dtype = "float32"
        c.data.prepare_micro = "mbpp"
        c.data.buckets = (256, 512)
        c.train.num_steps = 20
        c.train.batch_size = 4
        c.train.learning_rate = 3e-3
        c.train.warmup_steps = 2
        c.train.ce_chunk = 64
        c.train.eval_batches = 1
        c.checkpoint.every_steps = 10
    return c
