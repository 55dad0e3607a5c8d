"""The design documents' critic stage 1: the value head toward R = is_correct on 50K balanced samples
(``train.num_samples``).

    uv run python -m wmtp_jax.main --config=configs/recipes/critic.py
"""

from configs import critic

SAMPLES = 50_000


def get_config(preset: str = ""):
    c = critic.get_config(preset)
    c.workdir = "workdir/recipes/critic"
    c.train.num_samples = SAMPLES if preset != "micro" else 80  # micro: 20 steps of 4
    return c
