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

    # any model, reference, data or tokenizer path may be s3://bucket/key: mirrored once into storage.cache_dir
    # (keyed by ETag); remote_workdir=s3://...: checkpoints uploaded as committed, final/ and results at the end,
    # and a fresh node resumes from the newest complete remote checkpoint. Credentials: environment / role only.
    c.storage = ml_collections.ConfigDict(dict(cache_dir="artifacts/remote", endpoint_url="", remote_workdir=""))

    c.mlflow = ml_collections.ConfigDict()
    c.mlflow.tracking_uri = ""  # "" = $MLFLOW_TRACKING_URI, else a local store under the workdir
    c.mlflow.project = "wmtp"
    c.mlflow.experiment_name = ""  # "" = {project}/{objective}/{dataset}
    c.mlflow.artifact_location = ""  # "" = the server's default ({workdir}/mlartifacts for the local store)
    c.mlflow.tags = ml_collections.ConfigDict()  # tags set on every run
    c.mlflow.parent_run_id = ""  # set by a study: each arm is a nested run of the study's run
    c.mlflow.run_name = ""

    if preset == "micro":
        c.model.checkpoint = f"{MICRO_DIR}/mtp_meta"
        c.model.build_micro = True
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.model.scan_layers = False
        c.model.attention = "xla"
    return c


def eval_section(preset: str = "") -> ml_collections.ConfigDict:
    """The ``eval`` section: benchmarks, sampling and sandbox settings of the eval job, and of the evaluation at
    the end of a training run (``train.eval_at_end``)."""
    e = ml_collections.ConfigDict()
    e.benchmarks = ("mbpp", "humaneval", "codecontests")  # and "synthetic" (wmtp_jax/data/synthetic.py)
    e.mbpp_format = "3shot"  # 3shot (lm-evaluation-harness) | zeroshot (bigcode docstring)
    # the published parquet shards of the test split (private and generated tests; globs allowed); ":micro" uses the
    # shipped 30-problem sample of the train split, and its results say "train-split smoke set"
    e.codecontests = ("data/code_contests/test-*.parquet",)
    e.limit = 0  # > 0: only the first N problems of each benchmark (recorded)
    e.n_samples = 1  # completions per problem
    e.k = (1,)  # pass@k for each k <= n_samples
    e.temperature = 0.0  # 0 = greedy; the MTP paper: 0.1-0.2 for pass@1, 0.8 for pass@10/100
    e.top_p = 0.95
    e.max_new_tokens = 512
    e.batch_size = 8  # generation rows at once (a multiple of the data-parallel devices)
    e.speculative = False  # self-speculative decoding with the MTP heads (greedy only)
    e.prompt_buckets = (256, 512, 1024, 2048)
    e.timeout_s = 10.0  # per program
    e.memory_mb = 1024  # per program (address space)
    e.bootstrap = 1000  # resamples for the pass@k 95% interval
    if preset == "micro":
        from wmtp_jax.data import assets

        e.codecontests = (str(assets.CODECONTESTS_SAMPLE),)
        e.limit = 3
        e.n_samples = 2
        e.k = (1, 2)
        e.temperature = 0.8
        e.max_new_tokens = 32
        e.batch_size = 4
        e.timeout_s = 5.0
    return e


def section(schema) -> ml_collections.ConfigDict:
    """A config section holding the defaults of a typed section (a frozen dataclass of ``wmtp_jax``)."""
    return ml_collections.ConfigDict(dataclasses.asdict(schema()))


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The training defaults; each experiment file sets ``objective`` (baseline | critic | verifiable | rho1 |
    ref_tuning, see ``wmtp_jax.train.objectives``) and edits the rest."""
    from wmtp_jax.data.sampling import SamplingConfig
    from wmtp_jax.model.lora import LoraConfig
    from wmtp_jax.train.hooks import CheckpointConfig, EarlyStoppingConfig
    from wmtp_jax.train.objectives import CriticConfig, WeightingConfig

    c = common(preset)
    c.objective = "baseline"
    c.dry_run = False  # True: compile the step from abstract shapes, print per-device memory and FLOPs, exit

    # where the verifiable experiment's values come from: critic.model "" = the value head on the policy's trunk, or
    # a separate LLaMA checkpoint (trained in stage 1, frozen in stage 2 unless critic.co_train);
    # critic.train (stage 1): head | full | lora; critic.head: linear | mlp (critic.head_hidden, critic.head_dropout)
    c.critic = section(CriticConfig)
    c.reference = ml_collections.ConfigDict()
    c.reference.checkpoint = ""  # Rho-1 reference (torch or Orbax); n_future_tokens = 1, same tokenizer
    c.reference.dtype = "bfloat16"  # compute and storage dtype of the frozen reference; nf4 / int8: quantised

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # prepared {split}.jsonl (its {split}.index.npz beside it)
    c.data.validation = ""  # prepared validation jsonl ("" = no validation loss)
    c.data.prepare_micro = ""  # "mbpp", "labelled" or "synthetic": prepare shipped / generated data into cache_dir
    c.data.cache_dir = "artifacts/data"
    c.data.strategy = "correct"  # correct | all | balanced | curriculum | pairs
    c.data.correct_ratio = 0.5  # balanced
    c.data.repeat = False  # balanced: allow repeats within an epoch
    c.data.curriculum_correct_only = False
    # curriculum: inclusive difficulty bins (lo, hi) and (start fraction of training, proportion per bin); defaults
    # from the data design (low 1-3, medium 4-7, high 8-11; 70/30/0, then 30/60/10 from 30%, 10/50/40 from 70%)
    c.data.bins = SamplingConfig.bins
    c.data.schedule = SamplingConfig.schedule
    c.data.difficulty_range = ()  # (lo, hi): only problems of these difficulties, any strategy; () = all
    c.data.buckets = (512, 1024, 2048)  # padded lengths; a batch uses the smallest that fits
    c.data.pack = False  # first-fit packing into rows of max(buckets) tokens (train.batch_tokens needs it)
    c.data.num_workers = 0  # Grain worker processes

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.num_epochs = 0.0  # > 0: train this many epochs of the sampling strategy instead (sets num_steps)
    c.train.batch_size = 8  # global, in sequences
    c.train.batch_tokens = 0  # > 0: global token budget per step: data.pack rows of max(data.buckets) (sets batch_size)
    c.train.grad_accum_steps = 1
    c.train.learning_rate = 1e-5
    c.train.warmup_steps = 50
    c.train.end_lr_fraction = 0.1
    c.train.weight_decay = 0.1
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.max_grad_norm = 1.0
    c.train.ce_chunk = 256  # positions per chunk of the cross-entropy
    c.train.ce_tokens = 0  # > 0: only valid targets reach the output projection, at most this many per micro-batch
    c.train.head_weights = ()  # per-head loss weights; () = 1 for every head
    c.train.log_every = 1
    c.train.eval_batches = 4  # validation batches at every checkpoint
    c.train.max_nonfinite_steps = 5  # consecutive skipped (non-finite) updates before the run stops
    c.train.peak_flops_per_device = 0.0  # for MFU; 0 = look up the device kind (A100, H100, H200)
    # evaluation inside training: pass@1 (greedy) of the live parameters on the validation split of
    # eval_benchmarks (first eval_limit problems) every eval_every_steps (0 = off), logged as val/{benchmark}/pass@1
    # with the per-head CE of the benchmark's reference solutions; eval_at_end: the eval section's full evaluation
    # of final/ into {workdir}/eval (results.json, samples.jsonl), in the same MLflow run
    c.train.eval_every_steps = 0
    c.train.eval_benchmarks = ("mbpp",)
    c.train.eval_limit = 32
    c.train.eval_at_end = False
    c.eval = eval_section(preset)

    # token weights and the value loss: every key, its default and its meaning are those of WeightingConfig
    # (wmtp_jax/train/objectives.py), so a knob is declared once
    c.weighting = section(WeightingConfig)
    # checkpoint.every_steps, .keep (the last N, plus the best by validation loss), .async_save: CheckpointConfig
    c.checkpoint = section(CheckpointConfig)
    # LoRA adapters (rank 0 = full fine-tuning; the value head stays fully trainable); base_dtype nf4 / int8 = QLoRA;
    # final/ is merged unless export.merge_lora=False (adapters + the base's path)
    c.model.lora = section(LoraConfig)
    # final/ also as a Hugging Face LlamaForCausalLM in {workdir}/final_hf (head hf_head's path of an MTP model);
    # any model directory: scripts/export_checkpoint.py SRC DST --format hf|meta
    # export.merge_lora=False: a LoRA run's final/ holds its adapters and the path of its base (adapter_config.json)
    c.export = ml_collections.ConfigDict(dict(hf=False, hf_head=1, merge_lora=True))
    # train.early_stopping.metric ("" = off), .mode, .patience, .min_delta: EarlyStoppingConfig
    c.train.early_stopping = section(EarlyStoppingConfig)

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
