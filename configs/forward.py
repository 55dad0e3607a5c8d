"""Sharded forward pass of a (converted) MTP checkpoint: each head's next-token prediction for a few prompts.

uv run python -m wmtp_jax.main --config=configs/forward.py:micro
"""

from configs import base
from wmtp_jax import run_config as rc


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "forward"
    c.workdir = "workdir/forward"
    c.forward = rc.section_dict(rc.ForwardConfig)
    return c
