"""The design documents' reference tuning: next-token SFT of the Rho-1 reference on 200K correct solutions
(``train.num_samples``, turned into steps from the batch size; printed at the start).

    uv run python -m wmtp_jax.main --config=configs/recipes/ref_tuning.py --config.reference.checkpoint=/models/ref
"""

from configs import ref_tuning

SAMPLES = 200_000


def get_config(preset: str = ""):
    c = ref_tuning.get_config(preset)
    c.workdir = "workdir/recipes/ref_tuning"
    c.train.num_epochs = 0.0
    c.train.num_samples = SAMPLES if preset != "micro" else 80  # micro: 20 steps of 4
    return c
