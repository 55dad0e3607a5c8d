"""Verifiable critic stage 2: TD-error exp weights from the value head (docs/formulas.md, "TD-exp weights");
trains the policy and the value head.

uv run python -m wmtp_jax.main --config=configs/verifiable.py:micro --config.model.init_from=workdir/critic/final
"""

import ml_collections

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "verifiable"
    c.workdir = "workdir/verifiable"
    c.data.strategy = "curriculum"
    # stage 2 needs stage 1's critic (model.init_from); True runs from a zero value head (weights from R alone)
    c.critic = ml_collections.ConfigDict(dict(allow_untrained=False))
    if preset == "micro":
        c.data.prepare_micro = "labelled"
        c.data.strategy = "all"  # MBPP has no difficulty labels, so no curriculum bins
    return c
