"""Rollouts for the verifiable critic: sample completions for training problems from a checkpoint, run each
against the problem's tests, and write Alpaca JSONL + index (the data-preparation format) with ``is_correct``
from execution.

    uv run python -m wmtp_jax.main --config=configs/rollout.py:micro
    uv run python -m wmtp_jax.main --config=configs/rollout.py --config.model.checkpoint=workdir/baseline/final \\
        --config.rollout.source=codecontests --config.rollout.codecontests='("cc_train.jsonl",)'

Output: ``{rollout.out_dir or workdir/rollouts}/{rollout.split_name}.jsonl`` (+ ``.index.npz``, stats,
report), ready for ``--config.data.train`` of configs/critic.py.
"""

import ml_collections

from configs import base


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "rollout"
    c.workdir = "workdir/rollout"
    del c.model["init_from"]  # model.checkpoint: the policy that generates (see configs/eval.py)

    c.rollout = ml_collections.ConfigDict()
    c.rollout.source = "mbpp"  # any benchmark with tests: mbpp | humaneval | codecontests
    c.rollout.mbpp_split = "train"  # MBPP split (train = task ids 601-974)
    c.rollout.codecontests = ()  # CodeContests JSONL files; () = the shipped sample
    c.rollout.limit = 0  # > 0: only the first N problems
    c.rollout.n_samples = 8  # completions per problem
    c.rollout.temperature = 0.8
    c.rollout.top_p = 0.95
    c.rollout.max_new_tokens = 512
    c.rollout.batch_size = 8
    c.rollout.prompt_buckets = (256, 512, 1024, 2048)
    c.rollout.max_length = 2048  # records longer than this (tokens) are filtered, and counted
    c.rollout.timeout_s = 10.0
    c.rollout.memory_mb = 1024
    c.rollout.out_dir = ""  # "" = {workdir}/rollouts
    c.rollout.split_name = "train"

    if preset == "micro":
        c.rollout.limit = 4
        c.rollout.n_samples = 2
        c.rollout.max_new_tokens = 32
        c.rollout.batch_size = 4
        c.rollout.timeout_s = 5.0
    return c
