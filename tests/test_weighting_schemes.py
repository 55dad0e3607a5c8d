"""The token-weighting library (``wmtp_jax.weighting``): each scheme against a hand-computed case and against an
independent numpy computation written from its paper's equation, the registry, and the composed loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax import losses, weighting
from wmtp_jax.train.objectives import Signals, WeightingConfig, make_objective


def identity(x):  # the "projection" of logits fed in directly: head_hidden = logits
    return x


def _numpy_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _composed_loss(objective, logits, targets, valid):
    """The step's policy term for one micro-batch that is the whole batch: per-head weighted CE sums over D_k."""
    ce, entropy = losses.token_ce_entropy(identity, logits, targets, chunk=3)
    n = logits.shape[2]
    w = jax.lax.stop_gradient(objective.weights(Signals(ce=ce, valid=valid, batch={}, n_heads=n, entropy=entropy)))
    denom = jnp.maximum(objective.denominator(valid.sum(axis=(0, 1)).astype(jnp.float32)), 1.0)
    return losses.weighted_ce_sums(ce, w, valid) / denom, w


def _random_case(seed, shape=(2, 7, 3), vocab=11):
    rng = np.random.RandomState(seed)
    logits = (2 * rng.randn(*shape, vocab)).astype(np.float32)
    targets = rng.randint(0, vocab, shape)
    valid = rng.rand(*shape) < 0.8
    return logits, targets, valid


def test_registry_lists_every_scheme_and_rejects_unknown_names():
    assert {"uniform", "dft", "entropy", "rho1", "td"} <= set(weighting.WEIGHTINGS)
    with pytest.raises(ValueError, match="weighting.scheme='nope': expected one of"):
        weighting.make("nope", WeightingConfig())
    assert "weighting.scheme='nope': expected '' or one of" in " ".join(WeightingConfig(scheme="nope").problems())
    with pytest.raises(ValueError, match="already registered"):
        weighting.register(type("Again", (weighting.TokenWeighting,), {"name": "dft"}))
    with pytest.raises(ValueError, match="needs \\['gradient'\\]"):
        weighting.register(type("Odd", (weighting.TokenWeighting,), {"name": "odd", "needs": frozenset({"gradient"})}))


def test_objectives_default_to_their_own_scheme_and_check_what_a_scheme_needs():
    assert make_objective("baseline").scheme.name == "uniform"
    assert make_objective("rho1").scheme.name == "rho1" and make_objective("verifiable").scheme.name == "td"
    dft = make_objective("baseline", WeightingConfig(scheme="dft"))
    assert dft.scheme.name == "dft" and not dft.needs("entropy") and dft.scheme_problems() == []
    assert make_objective("baseline", WeightingConfig(scheme="entropy")).needs("entropy")
    (problem,) = make_objective("baseline", WeightingConfig(scheme="rho1")).scheme_problems()
    assert "needs reference_ce" in problem and "objective=rho1" in problem
    assert "trains no policy" in make_objective("critic", WeightingConfig(scheme="dft")).scheme_problems()[0]
    # a Rho-1 objective weighted otherwise runs no reference forward
    assert (
        make_objective("rho1").needs_reference
        and not make_objective("rho1", WeightingConfig(scheme="dft")).needs_reference
    )


def test_dft_hand_computed():
    """CE ln 2, ln 4, 0 -> p = 1/2, 1/4, 1 -> weights (0.5, 0.25, 1); the invalid target gets 0; the loss is
    (0.5 ln 2 + 0.25 ln 4 + 0) / 3 valid targets = ln 2 / 3."""
    ce = jnp.asarray([np.log(2.0), np.log(4.0), 0.0, 5.0], jnp.float32).reshape(1, 4, 1)
    valid = jnp.asarray([True, True, True, False]).reshape(1, 4, 1)
    objective = make_objective("baseline", WeightingConfig(scheme="dft"))
    w = objective.weights(Signals(ce=ce, valid=valid, batch={}, n_heads=1))
    np.testing.assert_allclose(np.asarray(w)[0, :, 0], [0.5, 0.25, 1.0, 0.0], rtol=1e-6)
    loss = losses.weighted_ce_sums(ce, w, valid) / objective.denominator(jnp.asarray([3.0]))
    assert float(loss[0]) == pytest.approx(np.log(2.0) / 3, rel=1e-6)


def test_dft_loss_and_gradient_match_numpy_from_the_paper():
    """L_k = -(1/n_k) sum sg(p) log p over head k's valid targets; its gradient in the logits is
    sg(p_y) (softmax - onehot(y)) / n_k (the CE gradient scaled by the constant p_y)."""
    logits, targets, valid = _random_case(0)
    objective = make_objective("baseline", WeightingConfig(scheme="dft"))
    loss = _composed_loss(objective, jnp.asarray(logits), targets, valid)[0].sum()
    grad = jax.grad(lambda x: _composed_loss(objective, x, targets, valid)[0].sum())(jnp.asarray(logits))
    probs = _numpy_softmax(logits.astype(np.float64))
    p_y = np.take_along_axis(probs, targets[..., None], -1)[..., 0]
    n = valid.sum(axis=(0, 1))
    want = (np.where(valid, -p_y * np.log(p_y), 0.0).sum(axis=(0, 1)) / n).sum()
    onehot = np.eye(logits.shape[-1])[targets]
    want_grad = np.where(valid[..., None], p_y[..., None] * (probs - onehot), 0.0) / n[None, None, :, None]
    assert float(loss) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6)


def test_entropy_hand_computed():
    """Entropy of uniform logits over 4 tokens is ln 4, of one dominant token about 0. Entropies (3, 1, 2, 0.5, 4)
    with rho 0.4: ceil(0.4 * 5) = 2 targets kept, those with 4 and 3."""
    logits = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 1, 4)
    ce, entropy = losses.token_ce_entropy(identity, logits, jnp.zeros((1, 2, 1), jnp.int32))
    np.testing.assert_allclose(np.asarray(entropy)[0, :, 0], [np.log(4.0), 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ce)[0, :, 0], [np.log(4.0), 0.0], atol=1e-6)
    h = jnp.asarray([3.0, 1.0, 2.0, 0.5, 4.0]).reshape(1, 5, 1)
    objective = make_objective("baseline", WeightingConfig(scheme="entropy", entropy_ratio=0.4))
    signals = Signals(ce=jnp.ones_like(h), valid=jnp.ones((1, 5, 1), bool), batch={}, n_heads=1, entropy=h)
    np.testing.assert_array_equal(np.asarray(objective.weights(signals))[0, :, 0], [1, 0, 0, 0, 1])
    assert float(objective.denominator(jnp.asarray([5.0]))[0]) == 5.0  # all valid targets, as the paper


def test_entropy_weights_and_loss_match_numpy_from_the_paper():
    logits, targets, valid = _random_case(1)
    objective = make_objective("baseline", WeightingConfig(scheme="entropy", entropy_ratio=0.2))
    loss, w = _composed_loss(objective, jnp.asarray(logits), targets, valid)
    probs = _numpy_softmax(logits.astype(np.float64))
    entropy = -(probs * np.log(probs)).sum(-1)
    ce = -np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0])
    for k in range(logits.shape[2]):
        h = entropy[..., k][valid[..., k]]
        keep = np.zeros_like(h)
        keep[np.argsort(-h)[: int(np.ceil(0.2 * len(h)))]] = 1.0
        np.testing.assert_array_equal(np.asarray(w)[..., k][valid[..., k]], keep)
        assert float(loss[k]) == pytest.approx((keep * ce[..., k][valid[..., k]]).sum() / len(h), rel=1e-5)
    # the entropy pass changes neither the CE nor its gradient, and is the same over valid targets only
    ce_jax, ent = losses.token_ce_entropy(identity, jnp.asarray(logits), targets, chunk=3)
    np.testing.assert_allclose(np.asarray(ent), entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(ce_jax), np.asarray(losses.token_ce(identity, jnp.asarray(logits), targets, chunk=3))
    )
    g_plain = jax.grad(lambda x: losses.token_ce(identity, x, targets, chunk=3).sum())(jnp.asarray(logits))
    g_both = jax.grad(lambda x: sum(t.sum() for t in losses.token_ce_entropy(identity, x, targets, chunk=3)))(
        jnp.asarray(logits)
    )
    np.testing.assert_allclose(np.asarray(g_both), np.asarray(g_plain), rtol=1e-6, atol=1e-7)
    ce_v, ent_v, over = losses.valid_token_ce_entropy(
        identity, jnp.asarray(logits), targets, jnp.asarray(valid), capacity=int(valid.sum()), chunk=4
    )
    assert int(over) == 0
    np.testing.assert_allclose(np.asarray(ent_v), np.where(valid, entropy, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ce_v), np.where(valid, ce, 0.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", ["dft", "entropy", "probability"])
def test_control_and_strength_apply_to_every_scheme(scheme):
    logits, targets, valid = _random_case(2)
    plain = make_objective("baseline", WeightingConfig(scheme=scheme))
    _, w = _composed_loss(plain, jnp.asarray(logits), targets, valid)
    _, w0 = _composed_loss(
        make_objective("baseline", WeightingConfig(scheme=scheme, strength=0.0)), logits, targets, valid
    )
    np.testing.assert_array_equal(np.asarray(w0)[valid], 1.0)  # strength 0: the unweighted baseline
    _, w_half = _composed_loss(
        make_objective("baseline", WeightingConfig(scheme=scheme, strength=0.5)), logits, targets, valid
    )
    np.testing.assert_allclose(np.asarray(w_half)[valid], 1.0 + 0.5 * (np.asarray(w)[valid] - 1.0), rtol=1e-6)
    shuffled = weighting.control_shuffle(w, jnp.asarray(valid), jax.random.key(0))
    for k in range(3):
        np.testing.assert_allclose(
            np.sort(np.asarray(shuffled)[..., k][valid[..., k]]), np.sort(np.asarray(w)[..., k][valid[..., k]])
        )


def test_the_readme_example_scheme_registers_and_weights():
    """The "Add your own weighting" example of the README, run as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("#### Add your own weighting") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", section.index("```python"))]
    try:
        exec(compile(code, "README.md", "exec"), {})
        objective = make_objective("baseline", WeightingConfig(scheme="focal"))
        ce = jnp.asarray([np.log(4.0), 0.0, 1.0]).reshape(1, 3, 1)
        valid = jnp.asarray([True, True, False]).reshape(1, 3, 1)
        w = objective.weights(Signals(ce=ce, valid=valid, batch={}, n_heads=1))
        np.testing.assert_allclose(np.asarray(w)[0, :, 0], [0.75, 0.0, 0.0], atol=1e-7)
        assert WeightingConfig(scheme="focal").problems() == []
    finally:
        weighting.WEIGHTINGS.pop("focal", None)


def test_a_rho1_run_weighted_otherwise_needs_no_reference_checkpoint():
    import sys
    from pathlib import Path

    from wmtp_jax import jobs

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from configs import rho1

    def problems(**weighting):
        c = rho1.get_config("")
        c.reference.checkpoint = ""
        c.weighting.update(weighting)
        return " ".join(jobs.problems(c, n_devices=4))

    assert "reference.checkpoint" in problems() and "reference.checkpoint" not in problems(scheme="dft")


def test_probability_family_hand_computed():
    """p = 1/2, 1/4, 1 (CE ln 2, ln 4, 0): alpha 1 gives p; alpha 2 keeping p >= 0.4 gives (1/4, 0, 1);
    -log p keeping p <= 0.5 (alpha 0, bottom) gives (1, 1, 0); the invalid target always 0."""
    ce = jnp.asarray([np.log(2.0), np.log(4.0), 0.0, 1.0], jnp.float32).reshape(1, 4, 1)
    valid = jnp.asarray([True, True, True, False]).reshape(1, 4, 1)

    def weights(**keys):
        objective = make_objective("baseline", WeightingConfig(scheme="probability", **keys))
        return np.asarray(objective.weights(Signals(ce=ce, valid=valid, batch={}, n_heads=1)))[0, :, 0]

    np.testing.assert_allclose(weights(prob_alpha=1.0), [0.5, 0.25, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(weights(prob_alpha=2.0, prob_keep="top", prob_threshold=0.4), [0.25, 0, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(weights(prob_alpha=0.0, prob_keep="bottom", prob_threshold=0.5), [1, 1, 0, 0])
    assert "weighting.prob_keep='side'" in " ".join(WeightingConfig(prob_keep="side").problems())


@pytest.mark.parametrize(
    "alpha,keep,q",
    [(1.0, "all", 0.0), (10.0, "all", 0.0), (1.0, "top", 0.3), (1.0, "bottom", 0.3), (0.0, "top", 0.3)],
)
def test_probability_family_gradient_is_the_papers_objective(alpha, keep, q):
    """The composed loss has the gradient of the paper's L = (1/n_k) sum f(p) per head, written in numpy from
    f_alpha(p) = (1 - p^alpha) / alpha (or -log p at alpha 0) times the threshold indicator:
    dL/dlogits = 1[kept] p^alpha (softmax - onehot(y)) / n_k."""
    logits, targets, valid = _random_case(3, vocab=5)
    keys = dict(scheme="probability", prob_alpha=alpha, prob_keep=keep, prob_threshold=q)
    objective = make_objective("baseline", WeightingConfig(**keys))
    grad = jax.grad(lambda x: _composed_loss(objective, x, targets, valid)[0].sum())(jnp.asarray(logits))
    probs = _numpy_softmax(logits.astype(np.float64))
    p_y = np.take_along_axis(probs, targets[..., None], -1)[..., 0]
    kept = {"all": np.ones_like(p_y, bool), "top": p_y >= q, "bottom": p_y <= q}[keep] & valid
    n = valid.sum(axis=(0, 1))
    onehot = np.eye(logits.shape[-1])[targets]
    want = np.where(kept[..., None], p_y[..., None] ** alpha * (probs - onehot), 0.0) / n[None, None, :, None]
    assert 0 < kept.sum() < valid.sum() or keep == "all"
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-6)


def test_sstoken_hand_computed():
    """Policy CE (1, 2, 3, 0.5), history CE (2, 2, 5, 0.5): REL = (1, 0, 2, 0); ratio 0.5 keeps ceil(2) = 2
    targets, those with REL 2 and 1; D_k is the valid count."""
    ce = jnp.asarray([1.0, 2.0, 3.0, 0.5]).reshape(1, 4, 1)
    history = jnp.asarray([2.0, 2.0, 5.0, 0.5]).reshape(1, 4, 1)
    scheme = weighting.make("sstoken", WeightingConfig(sstoken_ratio=0.5))
    stats = weighting.TokenStats(ce=ce, valid=jnp.ones((1, 4, 1), bool), history_ce=history)
    np.testing.assert_array_equal(np.asarray(scheme.weights(stats))[0, :, 0], [1, 0, 1, 0])
    assert make_objective("baseline", WeightingConfig(scheme="sstoken")).history_dtype == "bfloat16"
    assert make_objective("baseline").history_dtype == ""  # no history copy unless a scheme needs it


def test_sstoken_matches_numpy_from_the_paper():
    """REL = CE_hist - CE_theta = log p_theta - log p_hist, the top ceil(rho n_k) per head."""
    rng = np.random.RandomState(4)
    ce, hist = rng.rand(2, 9, 3).astype(np.float32) * 3, rng.rand(2, 9, 3).astype(np.float32) * 3
    valid = rng.rand(2, 9, 3) < 0.7
    scheme = weighting.make("sstoken", WeightingConfig(sstoken_ratio=0.3))
    w = np.asarray(scheme.weights(weighting.TokenStats(jnp.asarray(ce), jnp.asarray(valid), history_ce=hist)))
    for k in range(3):
        rel = (np.log(np.exp(-ce[..., k])) - np.log(np.exp(-hist[..., k])))[valid[..., k]]
        keep = np.zeros_like(rel)
        keep[np.argsort(-rel, kind="stable")[: int(np.ceil(0.3 * len(rel)))]] = 1.0
        np.testing.assert_array_equal(w[..., k][valid[..., k]], keep)
        assert (w[..., k][~valid[..., k]] == 0).all()


def test_token_cleaning_labels_reach_every_head_that_predicts_the_token():
    """Target-aligned labels (1, 0, 1, 1, 0) of tokens 0..4: head 0 at position p reads the label of token p+1,
    head 1 that of token p+2; invalid targets get 0."""
    labels = jnp.asarray([[1.0, 0.0, 1.0, 1.0, 0.0]])
    valid = jnp.asarray([[[1, 1], [1, 1], [1, 1], [1, 0], [0, 0]]], bool)
    objective = make_objective("baseline", WeightingConfig(scheme="token_cleaning", token_labels="x"))
    signals = Signals(ce=jnp.ones((1, 5, 2)), valid=valid, batch={"token_labels": labels}, n_heads=2)
    w = np.asarray(objective.weights(signals))[0]
    np.testing.assert_array_equal(w[:, 0], [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(w[:, 1], [1, 1, 0, 0, 0])
    assert objective.tables == {"token_labels": "x"}
    assert "weighting.token_labels" in " ".join(WeightingConfig(scheme="token_cleaning").problems())


def test_token_cleaning_ranks_all_response_tokens_of_the_split(tmp_path):
    """The fixed-model rule: CE_base - CE_ref of the response tokens of *all* records ranked together; the top
    ceil(0.5 * N) get 1 (prompt tokens never), written as a table the pipeline streams."""
    from wmtp_jax.data.pipeline import TokenizeRecord, TokenTable
    from wmtp_jax.data.records import IndexBuilder, index_path
    from wmtp_jax.data.tokenizer import Tokenizer
    from wmtp_jax.train.reference_ce import _write_table, token_cleaning_labels

    jsonl = tmp_path / "split.jsonl"
    rows = [{"instruction": "add", "input": "", "output": "return a + b"}, {"instruction": "x", "output": "pass"}]
    lines = [json.dumps(r) + "\n" for r in rows]
    jsonl.write_text("".join(lines))
    builder = IndexBuilder()
    for i, line in enumerate(lines):
        builder.add(sum(len(x) for x in lines[:i]), True, 10, f"p{i}", 0)
    builder.build().save(index_path(jsonl))
    tok = Tokenizer()
    masks = [TokenizeRecord(tok, 2048).map({**r, "_row": i})["loss_mask"] for i, r in enumerate(rows)]
    start = np.concatenate([[0], np.cumsum([len(m) for m in masks])])
    rng = np.random.RandomState(0)
    base, ref = rng.rand(start[-1]) * 4, rng.rand(start[-1]) * 4
    _write_table(str(tmp_path / "split"), "base_ce", base, start)
    _write_table(str(tmp_path / "split"), "ref_ce", ref, start)
    found = token_cleaning_labels(jsonl, ratio=0.5, progress=False)
    response = np.concatenate(masks).astype(bool)
    score = np.where(response, base - ref, -np.inf)
    n_keep = int(np.ceil(0.5 * response.sum()))
    want = np.zeros(len(score))
    want[np.argsort(-score)[:n_keep]] = 1.0
    labels = TokenTable(tmp_path / "split", "token_labels")
    got = np.concatenate([labels.row(i, len(m)) for i, m in enumerate(masks)])
    np.testing.assert_array_equal(got, want)
    assert found["kept"] == n_keep and found["response_tokens"] == response.sum()
    assert not got[~response].any()
