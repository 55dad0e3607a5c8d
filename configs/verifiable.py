"""Verifiable critic stage 2: TD-error exp weights from the value head (docs/formulas.md, "TD-exp weights");
trains the policy and the value head.

uv run python -m wmtp_jax.main --config=configs/verifiable.py:micro --config.model.init_from=workdir/critic/final
uv run python -m wmtp_jax.main --config=configs/verifiable.py:micro --config.critic.model=workdir/critic_sep/final
(the second: stage 1 trained a separate value model, ``configs/critic.py --config.critic.model=CHECKPOINT``)
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "verifiable"
    c.workdir = "workdir/verifiable"
    c.data.strategy = "curriculum"
    # stage 2 needs stage 1's critic: model.init_from (the value head on the policy) or critic.model (a separate
    # frozen value model); critic.allow_untrained=True runs from a zero value head (weights from R alone)
    if preset == "micro":
        c.data.prepare_micro = "labelled"
        c.data.strategy = "all"  # MBPP has no difficulty labels, so no curriculum bins
    return c
