"""Sharded forward pass of a (converted) MTP checkpoint: each head's next-token prediction for a few prompts.

uv run python -m wmtp_jax.main --config=configs/forward.py:micro
"""

from configs import base


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "forward"
    c.workdir = "workdir/forward"
    c.forward = dict(prompts=("def fibonacci(n):\n", "import numpy as np\n\ndef mean(xs):"))
    return c
