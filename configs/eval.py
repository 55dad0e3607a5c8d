"""Evaluation: restore a policy (params only, into the current mesh), generate, run the code, report pass@k.

    uv run python -m wmtp_jax.main --config=configs/eval.py:micro
    uv run python -m wmtp_jax.main --config=configs/eval.py --config.model.checkpoint=workdir/rho1/final

``model.checkpoint``: an Orbax model directory (a conversion or a run's ``final/``), a training workdir (its latest
checkpoint) or ``workdir/checkpoints/<step>``, or a Meta / Hugging Face torch checkpoint directory.
Results: ``{workdir}/eval/results.json`` and ``{workdir}/eval/samples.jsonl``, also logged to MLflow.
"""

import ml_collections

from configs import base


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "eval"
    c.workdir = "workdir/evaluation"  # results in {workdir}/eval/; use a training workdir to keep them together
    del c.model["init_from"]  # model.checkpoint: the policy to evaluate (see above)

    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks = ("mbpp", "humaneval", "codecontests")
    c.eval.mbpp_format = "3shot"  # 3shot (lm-evaluation-harness) | zeroshot (bigcode docstring)
    c.eval.codecontests = ()  # JSONL / parquet-converted JSONL files; () = the shipped sample
    c.eval.limit = 0  # > 0: only the first N problems of each benchmark (recorded)
    c.eval.n_samples = 1  # completions per problem
    c.eval.k = (1,)  # pass@k for each k <= n_samples
    c.eval.temperature = 0.0  # 0 = greedy; the MTP paper: 0.1-0.2 for pass@1, 0.8 for pass@10/100
    c.eval.top_p = 0.95
    c.eval.max_new_tokens = 512
    c.eval.batch_size = 8  # generation rows at once (a multiple of the data-parallel devices)
    c.eval.speculative = False  # self-speculative decoding with the MTP heads (greedy only)
    c.eval.prompt_buckets = (256, 512, 1024, 2048)
    c.eval.timeout_s = 10.0  # per program
    c.eval.memory_mb = 1024  # per program (address space)
    c.eval.bootstrap = 1000  # resamples for the pass@k 95% interval

    if preset == "micro":
        c.eval.limit = 3
        c.eval.n_samples = 2
        c.eval.k = (1, 2)
        c.eval.temperature = 0.8
        c.eval.max_new_tokens = 32
        c.eval.batch_size = 4
        c.eval.prompt_buckets = (256, 512, 1024, 2048)
        c.eval.timeout_s = 5.0
    return c
