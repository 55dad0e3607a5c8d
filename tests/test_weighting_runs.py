"""Each token weighting of the library trained end to end on the micro models, then evaluated, and ssToken's
history copy in the step (its own file, so that the two pytest-xdist workers, which take whole files, share the
end-to-end tests evenly)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import _batch, _trainer, read_metrics, run

from wmtp_jax import sharding
from wmtp_jax.checkpoint.micro import MICRO_MTP
from wmtp_jax.model import create_model
from wmtp_jax.train.step import StepConfig

SCHEME_RUNS = {
    "dft": ("ref_tuning", {}),
    "entropy": ("baseline", {}),
    # p >= 1/32000 (the uniform probability over the vocabulary): about half the targets of a random micro model
    "probability": (
        "baseline",
        {"weighting.prob_alpha": 1.0, "weighting.prob_keep": "top", "weighting.prob_threshold": 1 / 32000},
    ),
    "sstoken": ("baseline", {"weighting.history_decay": 0.5}),
}


@pytest.mark.parametrize("scheme", list(SCHEME_RUNS))
def test_a_weighting_scheme_trains_and_evaluates(scheme, shared, tmp_path):
    """DFT on a plain next-token model (n_future_tokens = 1, the reference); entropy selection, the probability
    family (-p keeping p >= 1/32000) and ssToken's retrospective excess loss on the 4-head MTP model: two steps, then
    the evaluation at the end of the run."""
    experiment, keys = SCHEME_RUNS[scheme]
    evaluation = {"train.eval_at_end": True, "eval.benchmarks": ("humaneval",), "eval.limit": 1}
    run(experiment, shared, tmp_path, **{"weighting.scheme": scheme, "train.num_steps": 2}, **keys, **evaluation)
    m = read_metrics(tmp_path)[2]
    if scheme == "dft":  # p(target) of each valid target: below 1, and its mean is the mean of exp(-CE)
        assert 0 < m["weight_min"] <= m["weight_mean"] < m["weight_max"] < 1 and "ce_head_1" not in m
    elif scheme == "entropy":  # ceil(0.2 n) of each head's valid targets selected, the loss divided by all of them
        assert 0.2 <= m["weight_frac_selected"] < 0.25 and m["entropy_mean"] > 0 and "ce_head_3" in m
        assert m["loss_head_0"] < m["ce_head_0"]
    elif scheme == "probability":  # p on the targets with p >= 1/32000, 0 on the others
        assert m["weight_min"] == 0 and 0 < m["weight_max"] < 1 and 0 < m["weight_frac_selected"] < 1
    else:  # ceil(0.6 n) of each head's valid targets, by the excess loss over the policy's EMA
        assert 0.6 <= m["weight_frac_selected"] < 0.65 and m["loss_head_0"] < m["ce_head_0"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["benchmarks"]["humaneval"]["problems"] == 1 and "pass@1" in results["benchmarks"]["humaneval"]
    assert (tmp_path / "report.md").is_file()


def test_the_history_copy_is_the_policys_ema():
    """ssToken's history starts as the policy (bfloat16 copy) and after each step becomes
    a * history + (1 - a) * new parameters; the step then reads its CE."""
    mesh = sharding.make_mesh()
    model = create_model(MICRO_MTP, mesh, seed=0)
    trainer = _trainer(model, "baseline", mesh, StepConfig(ce_chunk=16), scheme="sstoken", history_decay=0.75)
    state = trainer.initial_state()
    start = jax.tree.map(lambda x: np.asarray(x, np.float32), state.params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.history))
    jax.tree.map(
        lambda h, p: np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(jnp.bfloat16(p), np.float32)),
        state.history,
        start,
    )
    state, metrics = trainer.step(state, jax.device_put(_batch(), sharding.batch_sharding(mesh)))
    assert 0.6 <= float(metrics["weight_frac_selected"]) < 0.65
    want = jax.tree.map(
        lambda h0, p: 0.75 * np.asarray(jnp.bfloat16(h0), np.float32) + 0.25 * np.asarray(p), start, state.params
    )
    jax.tree.map(
        lambda h, w: np.testing.assert_allclose(np.asarray(h, np.float32), w, rtol=1e-2, atol=1e-6), state.history, want
    )
    moved = [
        np.abs(np.asarray(h, np.float32) - s).max()
        for h, s in zip(jax.tree.leaves(state.history), jax.tree.leaves(start))
    ]
    assert max(moved) > 0
