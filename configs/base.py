"""Defaults shared by every experiment. Each experiment file calls ``base.get_config(preset)`` and edits it.

Every section is built from its typed section in ``wmtp_jax/run_config.py`` (``section_dict``), where each key is
declared once with its default and its meaning; this file holds only what a preset changes.

Presets (the ``:NAME`` after the config path): "" = production (7B_1T_4 on a 4-GPU FSDP mesh; checkpoint and
data paths given on the command line), "micro" = the local stand-in (micro models built once under
``artifacts/micro``, shipped MBPP data and LLaMA tokenizer, all local devices, a few minutes on a laptop).
"""

import ml_collections

from wmtp_jax import run_config as rc
from wmtp_jax.data import assets
from wmtp_jax.eval.protocols import PROTOCOLS

MICRO_DIR = "artifacts/micro"


def common(preset: str = "") -> ml_collections.ConfigDict:
    """The keys every job shares (training, evaluation, rollouts): run identity, mesh, model, MLflow."""
    if preset not in ("", "default", "micro"):
        raise ValueError(f"unknown config preset {preset!r}; expected '' or 'micro'")
    c = ml_collections.ConfigDict()
    run = rc.RunConfig()
    c.job, c.preset, c.workdir, c.seed, c.tokenizer = run.job, preset or "default", run.workdir, run.seed, ""
    for name, schema in (
        ("mesh", rc.MeshConfig),
        ("model", rc.ModelSection),
        ("distributed", rc.DistributedConfig),
        ("storage", rc.StorageConfig),
        ("mlflow", rc.MlflowConfig),
    ):
        c[name] = rc.section_dict(schema)
    if preset == "micro":
        c.model.checkpoint = f"{MICRO_DIR}/mtp_meta"
        c.model.build_micro = True
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.model.scan_layers = False
        c.model.attention = "xla"
    return c


def eval_section(preset: str = "") -> ml_collections.ConfigDict:
    """The ``eval`` section (``run_config.EvalConfig``) under a published protocol (``eval/protocols.py``): the MTP
    paper's (200 samples, pass@1/10/100) in production, ``greedy`` for ``:micro``, which evaluates 3 problems per
    benchmark with 32 new tokens and the shipped 30-problem CodeContests sample of the train split (its results say
    "train-split smoke set")."""
    protocol = "greedy" if preset == "micro" else "mtp_paper"
    e = rc.section_dict(rc.EvalConfig, protocol=protocol, **PROTOCOLS[protocol])
    if preset == "micro":
        e.codecontests = (str(assets.CODECONTESTS_SAMPLE),)
        e.limit = 3
        e.max_new_tokens = 32
        e.batch_size = 4
        e.timeout_s = 5.0
    return e


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    """The training defaults; each experiment file sets ``objective`` (baseline | critic | verifiable | rho1 |
    ref_tuning, see ``wmtp_jax.train.objectives``) and edits the rest."""
    c = common(preset)
    c.objective = "baseline"
    c.dry_run = False
    for name, schema in (
        ("critic", rc.CriticConfig),
        ("reference", rc.ReferenceConfig),
        ("data", rc.DataConfig),
        ("train", rc.TrainConfig),
        ("weighting", rc.WeightingConfig),
        ("checkpoint", rc.CheckpointConfig),
        ("export", rc.ExportConfig),
    ):
        c[name] = rc.section_dict(schema)
    # final/ is evaluated at the end of every production run (report.md beside results.json); the shipped
    # benchmarks only: add "codecontests" once its test split is downloaded (eval.codecontests)
    c.eval = eval_section(preset)
    c.eval.benchmarks = ("mbpp", "humaneval", "humaneval_plus", "mbpp_plus")
    c.train.eval_at_end = preset != "micro"

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
