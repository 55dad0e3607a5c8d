"""The design documents' Rho-1 recipe: |excess loss| against the tuned reference, the top 15 % graded (the design's
variant, ``weighting.rho1_scheme=seed``, docs/formulas.md "Rho-1 weights"), softmax temperature 0.5, and the
weights moved halfway toward uniform (strength lambda 0.5).

    uv run python -m wmtp_jax.main --config=configs/recipes/rho1.py \
        --config.reference.checkpoint=workdir/recipes/ref_tuning/final
"""

from configs import rho1


def get_config(preset: str = ""):
    c = rho1.get_config(preset)
    c.workdir = "workdir/recipes/rho1"
    w = c.weighting
    w.rho1_scheme = "seed"  # the design's graded top-p variant
    w.rho1_mode = "absolute"  # |CE_policy - CE_reference|
    w.rho1_top_p = 0.15
    w.rho1_alpha = 0.3  # base weight of the targets outside the top p (the z-score removes it, as documented)
    w.rho1_temperature = 0.5
    w.rho1_eps = 0.05  # clip [eps, w_max], then renormalised to mean 1
    w.rho1_w_max = 3.0
    w.strength = 0.5  # lambda: w <- 1 + 0.5 (w - 1)
    return c
