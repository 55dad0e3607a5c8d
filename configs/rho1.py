"""Rho-1: excess-loss weights from a frozen reference model (docs/formulas.md, "Rho-1 weights"), top 60% per head.

    uv run python -m wmtp_jax.main --config=configs/rho1.py:micro
A ref_tuning output can serve as the reference: ``--config.reference.checkpoint=workdir/ref_tuning/final``.
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "rho1"
    c.workdir = "workdir/rho1"
    c.data.strategy = "correct"
    return c
