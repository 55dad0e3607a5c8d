"""Reference tuning: next-token SFT of the Rho-1 reference (n_future_tokens = 1) on correct solutions.

uv run python -m wmtp_jax.main --config=configs/ref_tuning.py:micro
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "ref_tuning"
    c.workdir = "workdir/ref_tuning"
    c.data.strategy = "correct"
    c.model.checkpoint = c.reference.get_ref("checkpoint")  # the reference model is the one trained (one value)
    c.export.hf = True  # the reference-tuning plan's checkpoint_final in Hugging Face format: {workdir}/final_hf
    return c
