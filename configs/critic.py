"""Critic stage 1: pretrain the value head toward the sequence reward R = is_correct; trunk and heads frozen.

    uv run python -m wmtp_jax.main --config=configs/critic.py:micro
Its final model (``{workdir}/final``) feeds stage 2: ``configs/verifiable.py --config.model.init_from=...``.
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "critic"
    c.workdir = "workdir/critic"
    c.data.strategy = "balanced"
    c.data.correct_ratio = 0.5
    c.train.learning_rate = 1e-4
    if preset == "micro":
        c.data.prepare_micro = "labelled"  # MBPP train with execution-labelled incorrect solutions (shipped)
        c.train.learning_rate = 1e-2
    return c
