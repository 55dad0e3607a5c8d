"""Rollouts for the verifiable critic: sample completions for training problems from a checkpoint, run each
against the problem's tests, and write Alpaca JSONL + index (the data-preparation format) with ``is_correct``
from execution.

    uv run python -m wmtp_jax.main --config=configs/rollout.py:micro
    uv run python -m wmtp_jax.main --config=configs/rollout.py --config.model.checkpoint=workdir/baseline/final \\
        --config.rollout.source=codecontests --config.rollout.codecontests='("cc_train.jsonl",)'

Output: ``{rollout.out_dir or workdir/rollouts}/{rollout.split_name}.jsonl`` (+ ``.index.npz``, stats,
report), ready for ``--config.data.train`` of configs/critic.py.
"""

from configs import base
from wmtp_jax import run_config as rc


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "rollout"
    c.workdir = "workdir/rollout"
    del c.model["init_from"]  # model.checkpoint: the policy that generates (see configs/eval.py)

    c.rollout = rc.section_dict(rc.RolloutConfig)  # every key, its default and meaning: run_config.py
    if preset == "micro":
        c.rollout.limit = 4
        c.rollout.n_samples = 2
        c.rollout.max_new_tokens = 32
        c.rollout.batch_size = 4
        c.rollout.timeout_s = 5.0
    return c
