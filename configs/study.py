"""A study: train the arms, evaluate them on the same problems and samples, compare them with paired statistics.

    uv run python -m wmtp_jax.main --config=configs/study.py:micro      # 5 arms x 800 steps on the CPU
    uv run python -m wmtp_jax.main --config=configs/study.py \
        --config.study.common='("model.checkpoint=/models/7B_1T_4", "data.train=/data/cc/train.jsonl", ...)'

Writes ``{workdir}/report.md``, figures and ``summary.json``; each arm's run lives in
``{workdir}/arms/{arm}/seed{s}`` (a nested MLflow run of the study's run). Re-running resumes: finished arms are
skipped. ``--config.study.print_commands=True`` prints one command per arm and seed for a cluster;
``--config.study.report_only=True`` then builds the report from the finished workdirs.

An arm: ``config`` (a training config in configs/), ``overrides`` (``KEY=VALUE`` as on the command line; ``{arm}``
in a value is that arm's ``final/`` of the same seed, which makes it a dependency), ``grid`` (``KEY=V1,V2,...``:
one arm per combination) and ``compare`` (False for a stage that only feeds another arm).
"""

import ml_collections

from configs import base
from wmtp_jax import run_config as rc


def arm(config, *overrides, grid=(), compare=True):
    """One arm (``run_config.ArmConfig``)."""
    return rc.section_dict(rc.ArmConfig, config=config, overrides=tuple(overrides), grid=tuple(grid), compare=compare)


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "study"
    c.workdir = "workdir/study"
    c.eval = base.eval_section(preset)  # the same evaluation for every arm
    c.eval.benchmarks = ("mbpp", "humaneval", "humaneval_plus", "mbpp_plus", "codecontests")

    c.study = rc.section_dict(rc.StudyConfig)  # every key, its default and meaning: run_config.py
    c.study.arms = ml_collections.ConfigDict(
        {
            "baseline": arm("baseline"),
            "rho1": arm("rho1"),
            "rho1_control": arm("rho1", "weighting.control=True"),
            "critic": arm("critic", compare=False),
            "verifiable": arm("verifiable", "model.init_from={critic}"),
            "verifiable_control": arm("verifiable", "model.init_from={critic}", "weighting.control=True"),
            # the token-weighting library (README, "Token weighting"), each with its shuffled control; Token
            # Cleaning needs its labels first (scripts/precompute_ref_ce.py --base), so it is an opt-in arm:
            #   arm("baseline", "weighting.scheme=token_cleaning", "weighting.token_labels=/data/cc/train")
            "dft": arm("baseline", "weighting.scheme=dft"),
            "dft_control": arm("baseline", "weighting.scheme=dft", "weighting.control=True"),
            "entropy": arm("baseline", "weighting.scheme=entropy"),
            "entropy_control": arm("baseline", "weighting.scheme=entropy", "weighting.control=True"),
            "prob_p10": arm("baseline", "weighting.scheme=probability", "weighting.prob_alpha=10.0"),
            "prob_p10_control": arm(
                "baseline", "weighting.scheme=probability", "weighting.prob_alpha=10.0", "weighting.control=True"
            ),
            "sstoken": arm("baseline", "weighting.scheme=sstoken"),
            "sstoken_control": arm("baseline", "weighting.scheme=sstoken", "weighting.control=True"),
        }
    )

    if preset == "micro":
        # the synthetic task (wmtp_jax/data/synthetic.py), on which a random micro model's pass@1 can leave 0
        # (MBPP / HumanEval stay at 0); the README says what this budget reaches
        c.study.seeds = (0,)
        c.eval.benchmarks = ("synthetic",)
        c.eval.limit = 0  # the 30 held-out instances
        c.eval.max_new_tokens = 16
        c.eval.batch_size = 20
        c.eval.prompt_buckets = (64,)
        # ~800 steps of 8 instances: the micro model starts copying the instruction's constant between steps 600
        # and 800 (pass@1 jumps from ~0.1 to ~0.9); train.ce_tokens projects only the ~14 x 4 output targets of
        # each 72-token row onto the 32000-word vocabulary, which makes a step ~4x cheaper on a CPU
        c.study.common = (
            "data.prepare_micro=synthetic",
            "data.buckets=(72,)",
            "train.num_steps=800",
            "train.batch_size=8",
            "train.ce_tokens=512",
            "train.warmup_steps=20",
            "train.learning_rate=5e-3",
            "checkpoint.every_steps=200",
            "train.eval_batches=2",
        )
        c.study.arms = ml_collections.ConfigDict(
            {
                "baseline": arm("baseline"),
                "rho1": arm("rho1"),
                "dft": arm("baseline", "weighting.scheme=dft"),
                "entropy": arm("baseline", "weighting.scheme=entropy"),
                "sstoken": arm("baseline", "weighting.scheme=sstoken"),
            }
        )
    return c
