"""Baseline MTP fine-tuning: every output token has weight 1, all heads trained.

uv run python -m wmtp_jax.main --config=configs/baseline.py:micro
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "baseline"
    c.workdir = "workdir/baseline"
    c.data.strategy = "correct"
    return c
