"""Reference tuning: next-token SFT of the Rho-1 reference (n_future_tokens = 1) on correct solutions.

Defaults from the reference-tuning plan: learning rate 5e-5, global batch 32, 2 epochs of the correct solutions,
bf16 compute (float32 master weights and AdamW moments, as everywhere here), final/ also in Hugging Face format.

uv run python -m wmtp_jax.main --config=configs/ref_tuning.py:micro
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.objective = "ref_tuning"
    c.workdir = "workdir/ref_tuning"
    c.data.strategy = "correct"
    c.train.learning_rate = 5e-5
    c.train.batch_size = 32
    c.train.num_epochs = 2.0  # turned into steps from the prepared data (printed at the start)
    c.model.dtype = "bfloat16"
    c.model.checkpoint = c.reference.get_ref("checkpoint")  # the reference model is the one trained (one value)
    c.export.hf = True  # the reference-tuning plan's checkpoint_final in Hugging Face format: {workdir}/final_hf
    if preset == "micro":  # the micro stand-in keeps base's few fast steps
        c.train.learning_rate = 3e-3
        c.train.batch_size = 4
        c.train.num_epochs = 0.0
        c.model.dtype = "float32"
    return c
