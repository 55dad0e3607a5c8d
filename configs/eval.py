"""Evaluation: restore a policy (params only, into the current mesh), generate, run the code, report pass@k.

    uv run python -m wmtp_jax.main --config=configs/eval.py:micro
    uv run python -m wmtp_jax.main --config=configs/eval.py --config.model.checkpoint=workdir/rho1/final

``model.checkpoint``: an Orbax model directory (a conversion or a run's ``final/``), a training workdir (its latest
checkpoint) or ``workdir/checkpoints/<step>``, or a Meta / Hugging Face torch checkpoint directory.
Results: ``{workdir}/eval/results.json`` and ``{workdir}/eval/samples.jsonl``, also logged to MLflow.
"""

from configs import base


def get_config(preset: str = ""):
    c = base.common(preset)
    c.job = "eval"
    c.workdir = "workdir/evaluation"  # results in {workdir}/eval/; use a training workdir to keep them together
    del c.model["init_from"]  # model.checkpoint: the policy to evaluate (see above)

    c.eval = base.eval_section(preset)
    return c
