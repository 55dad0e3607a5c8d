"""The design documents' critic recipe, stage 2: TD-exp weights ``clip(exp(delta / beta), 0.1, 5)`` with beta 0.9
(docs/formulas.md, "TD-exp weights") on 200K samples (``train.num_samples``), starting from stage 1's critic.

    uv run python -m wmtp_jax.main --config=configs/recipes/verifiable.py \
        --config.model.init_from=workdir/recipes/critic/final
"""

from configs import verifiable

SAMPLES = 200_000


def get_config(preset: str = ""):
    c = verifiable.get_config(preset)
    c.workdir = "workdir/recipes/verifiable"
    c.weighting.beta = 0.9
    c.weighting.w_min, c.weighting.w_max = 0.1, 5.0
    c.train.num_samples = SAMPLES if preset != "micro" else 80  # micro: 20 steps of 4
    return c
