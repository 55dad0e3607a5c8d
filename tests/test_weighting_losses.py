"""Weights and losses on hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax import alignment, losses
from wmtp_jax.weighting import common, rho1, td

# one row: positions 0-2 prompt, 3-5 output (5 = EOS), 6 padding
MASK = jnp.array([[0, 0, 0, 1, 1, 1, 0]])
VALUES = jnp.array([[0.0, 0.1, 0.2, 0.4, 0.7, 0.9, 0.0]])


def test_td_errors_bootstrap_and_terminal_reward():
    rewards = jnp.full((1, 7), 1.0)
    delta = np.asarray(td.td_errors(VALUES, rewards, MASK, gamma=1.0))
    # token 3: V[3] - V[2] (V before the first output = prompt's last position); token 4: V[4] - V[3];
    # token 5 (terminal): R - V[4]
    np.testing.assert_allclose(delta[0], [0, 0, 0, 0.4 - 0.2, 0.7 - 0.4, 1.0 - 0.7, 0], atol=1e-6)
    delta_g = np.asarray(td.td_errors(VALUES, jnp.zeros((1, 7)), MASK, gamma=0.5))
    np.testing.assert_allclose(delta_g[0, 3:6], [0.5 * 0.4 - 0.2, 0.5 * 0.7 - 0.4, 0.0 - 0.7], atol=1e-6)


def test_gae_reverse_scan_matches_hand_computation():
    delta = jnp.array([[0, 0, 0, 0.2, 0.3, 0.3, 0.0]])
    adv = np.asarray(td.gae(delta, MASK, gamma=1.0, lam=0.5))
    a5 = 0.3
    a4 = 0.3 + 0.5 * a5
    a3 = 0.2 + 0.5 * a4
    np.testing.assert_allclose(adv[0], [0, 0, 0, a3, a4, a5, 0], atol=1e-6)
    # two packed sequences: the scan must not leak across them
    mask2 = jnp.array([[1, 1, 0, 1, 1]])
    adv2 = np.asarray(td.gae(jnp.array([[1.0, 1.0, 0.0, 1.0, 1.0]]), mask2, 1.0, 1.0))
    np.testing.assert_allclose(adv2[0], [2, 1, 0, 2, 1])


def test_td_weights_clip_exp_and_carry_no_gradient():
    rewards = jnp.zeros((1, 7))
    w, adv, _ = td.td_weights(VALUES, rewards, MASK, beta=0.5, w_min=0.5, w_max=1.5)
    expected = np.clip(np.exp(np.asarray(adv)[0, 3:6] / 0.5), 0.5, 1.5)
    np.testing.assert_allclose(np.asarray(w)[0, 3:6], expected, rtol=1e-6)
    assert np.asarray(w)[0, [0, 1, 2, 6]].sum() == 0
    grad = jax.grad(lambda v: td.td_weights(v, rewards, MASK)[0].sum())(VALUES)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_whitening_uses_ema_statistics():
    delta = jnp.array([[0.0, 1.0, 3.0]])
    mask = jnp.array([[0, 1, 1]])
    out, ema = td.whiten(delta, mask, {"mean": jnp.zeros(()), "var": jnp.zeros(()), "count": jnp.zeros(())}, 0.9)
    # first update, bias-corrected: mean 2, var 1 -> (x - 2) / 1
    np.testing.assert_allclose(np.asarray(out)[0], [0.0, -1.0, 1.0], atol=1e-3)
    assert float(ema["count"]) == 1.0


def test_per_head_alignment():
    tok = jnp.array([[10, 11, 12, 13, 14]])
    ph = np.asarray(alignment.per_head(tok, 3))
    np.testing.assert_array_equal(ph[0, 0], [11, 12, 13])  # head k at p gets token p+k+1
    np.testing.assert_array_equal(ph[0, 3], [14, 0, 0])


def test_rho1_hard_selection_top_k_per_head():
    ce_pol = jnp.array([[[5.0, 1.0], [4.0, 2.0], [3.0, 3.0], [2.0, 4.0], [9.0, 9.0]]])
    ce_ref = jnp.array([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    valid = jnp.array([[[1, 1], [1, 1], [1, 1], [1, 1], [0, 0]]], bool)
    w = np.asarray(rho1.rho1_weights(ce_pol, ce_ref, valid, ratio=0.5))
    np.testing.assert_array_equal(w[0, :, 0], [1, 1, 0, 0, 0])  # head 0: scores 4, 3, 2, 1
    np.testing.assert_array_equal(w[0, :, 1], [0, 0, 1, 1, 0])  # head 1: scores 0, 1, 2, 3; invalid never selected
    w_abs = np.asarray(rho1.rho1_weights(ce_pol - 3.0, ce_ref, valid, mode="absolute", ratio=0.25))
    np.testing.assert_array_equal(w_abs[0, :, 0], [0, 0, 0, 1, 0])  # |2-1-... |: scores 1, 0, 1, 2


def test_rho1_soft_weights_mean_one_and_bounded():
    rng = np.random.RandomState(0)
    score = jnp.asarray(rng.randn(2, 50, 3))
    valid = jnp.asarray(rng.rand(2, 50, 3) > 0.2)
    w = np.asarray(rho1.soft_weights(score, valid, temperature=0.5, eps=0.05, w_max=3.0))
    v = np.asarray(valid)
    np.testing.assert_allclose((w * v).sum(axis=(0, 1)) / v.sum(axis=(0, 1)), 1.0, rtol=1e-5)
    assert w[~v].sum() == 0 and w[v].min() > 0
    for h in range(3):  # the blueprint, step by step in numpy: z-score -> softmax(z/T) -> *n -> clip -> mean 1
        s = np.asarray(score)[..., h][v[..., h]]
        z = (s - s.mean()) / (s.std() + 1e-6)
        p = np.exp(z / 0.5 - (z / 0.5).max())
        c = np.clip(p / p.sum() * len(s), 0.05, 3.0)
        np.testing.assert_allclose(w[..., h][v[..., h]], c / c.mean(), rtol=1e-4)


def test_control_shuffle_keeps_the_multiset_and_mask():
    rng = np.random.RandomState(1)
    w = jnp.asarray(rng.rand(3, 20, 2).astype(np.float32))
    valid = jnp.asarray(rng.rand(3, 20, 2) > 0.3)
    out = np.asarray(common.control_shuffle(w, valid, jax.random.key(0)))
    for h in range(2):
        v = np.asarray(valid)[..., h]
        np.testing.assert_allclose(np.sort(out[..., h][v]), np.sort(np.asarray(w)[..., h][v]))
        assert not np.array_equal(out[..., h][v], np.asarray(w)[..., h][v])
        assert out[..., h][~v].sum() == 0


def test_mtp_targets_respect_loss_mask_and_segments():
    tokens = jnp.array([[1, 5, 6, 7, 1, 8, 9]])
    mask = jnp.array([[0, 0, 1, 1, 0, 1, 1]])
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2]])
    targets, valid = alignment.mtp_targets(tokens, mask, seg, 2)
    np.testing.assert_array_equal(np.asarray(targets)[0, :, 0], [5, 6, 7, 1, 8, 9, 0])
    np.testing.assert_array_equal(np.asarray(valid)[0, :, 0], [0, 1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(valid)[0, :, 1], [1, 1, 0, 0, 1, 0, 0])  # no crossing into seq 2


@pytest.mark.parametrize("chunk", [3, 8, 64])
def test_chunked_ce_equals_full_softmax_ce(chunk):
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(2, 10, 3, 16).astype(np.float32))
    w = jnp.asarray(rng.randn(16, 50).astype(np.float32))
    t = jnp.asarray(rng.randint(0, 50, (2, 10, 3)))

    def project(w):  # the shared output projection [..., d] -> [..., V]
        return lambda x: jnp.einsum("...d,dv->...v", x, w, preferred_element_type=jnp.float32)

    ce = losses.token_ce(project(w), h, t, chunk=chunk)
    logits = np.einsum("bshd,dv->bshv", np.asarray(h), np.asarray(w))
    ref = -np.take_along_axis(jax.nn.log_softmax(logits, -1), np.asarray(t)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(ce), ref, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda w: losses.token_ce(project(w), h, t, chunk=chunk).sum())(w)
    g_ref = jax.grad(
        lambda w: (
            -jnp.take_along_axis(jax.nn.log_softmax(jnp.einsum("bshd,dv->bshv", h, w), -1), t[..., None], -1).sum()
        )
    )(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-4)


def test_value_losses_and_explained_variance():
    v, t, m = jnp.array([0.0, 1.0, 3.0]), jnp.array([1.0, 1.0, 0.0]), jnp.array([1, 1, 1], bool)
    assert float(losses.value_loss_sum(v, t, m, "mse")) == pytest.approx(0.5 * (1 + 0 + 9))
    assert float(losses.value_loss_sum(v, t, m, "huber", 1.0)) == pytest.approx(0.5 + 0 + 2.5)
    assert float(losses.explained_variance(t, t, m)) == pytest.approx(1.0)
    assert float(losses.explained_variance(jnp.zeros(3), t, m)) == pytest.approx(0.0, abs=1e-6)


def test_rho1_design_variant_hand_computed():
    """|score| (0, 1, 2, 3, 4), top 20%: q = the 0.8 quantile = 3.2, so only 4 is graded: raw = (a, a, a, a, 1 + a);
    z = (-0.5, -0.5, -0.5, -0.5, 2) (population std 0.4); T 0.5: 5 softmax(2z) = (0.0328 x4, 4.869) -> clip
    [0.05, 3] -> (0.05 x4, 3) -> renormalised to mean 1: (0.078125 x4, 4.6875), for any alpha."""
    score = -jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 5, 1)  # the sign is dropped
    valid = jnp.ones((1, 5, 1), bool)
    for alpha in (0.0, 0.5):
        w = np.asarray(rho1.seed_weights(score, valid, top_p=0.2, alpha=alpha, temperature=0.5))[0, :, 0]
        np.testing.assert_allclose(w, [0.078125] * 4 + [4.6875], rtol=1e-4)
    masked = np.asarray(rho1.seed_weights(score, valid.at[0, 4, 0].set(False), top_p=0.2, alpha=0.5))[0, :, 0]
    assert masked[4] == 0.0 and masked[:4].sum() == pytest.approx(4.0) and masked.argmax() == 3


def _design_weights_numpy(score, valid, top_p, alpha, temperature, eps, w_max):
    """The design documents' formula, per head, written from its text with numpy."""
    out = np.zeros_like(score)
    for k in range(score.shape[-1]):
        s = np.abs(score[..., k][valid[..., k]])
        raw = np.where(s > np.quantile(s, 1 - top_p), s / s.max(), 0.0) + alpha
        z = (raw - raw.mean()) / (raw.std() + 1e-6)
        p = np.exp(z / temperature - (z / temperature).max())
        w = np.clip(len(s) * p / p.sum(), eps, w_max)
        out[..., k][valid[..., k]] = w * len(s) / w.sum()
    return out


def test_rho1_design_variant_matches_numpy():
    rng = np.random.RandomState(3)
    score = rng.randn(2, 9, 3).astype(np.float32)
    valid = rng.rand(2, 9, 3) < 0.8
    got = rho1.rho1_weights(
        jnp.asarray(score), jnp.zeros_like(score), jnp.asarray(valid), scheme="seed", top_p=0.2, alpha=0.3,
        temperature=0.6, eps=0.05, w_max=3.0,
    )  # fmt: skip
    want = _design_weights_numpy(score, valid, 0.2, 0.3, 0.6, 0.05, 3.0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # the top 20% of each head's targets by |excess loss| carry the largest weights, graded by it
    for k in range(3):
        s, w = np.abs(score[..., k][valid[..., k]]), np.asarray(got)[..., k][valid[..., k]]
        top = s > np.quantile(s, 0.8)
        assert w[top].min() > w[~top].max() and np.all(np.diff(w[top][np.argsort(s[top])]) >= 0)


def test_valid_token_ce_equals_dense_ce_at_valid_targets_and_counts_overflow():
    rng = np.random.RandomState(1)
    h = jnp.asarray(rng.randn(2, 10, 3, 16).astype(np.float32))
    w = jnp.asarray(rng.randn(16, 50).astype(np.float32))
    t = jnp.asarray(rng.randint(0, 50, (2, 10, 3)))
    valid = jnp.asarray(rng.rand(2, 10, 3) < 0.3)
    n_valid = int(valid.sum())

    def project(w):
        return lambda x: jnp.einsum("...d,dv->...v", x, w, preferred_element_type=jnp.float32)

    def dense(w):
        return jnp.where(valid, losses.token_ce(project(w), h, t, chunk=4), 0.0)

    def sparse(w, capacity):
        return losses.valid_token_ce(project(w), h, t, valid, capacity=capacity, chunk=4)

    ce, over = sparse(w, n_valid + 5)
    assert int(over) == 0
    np.testing.assert_allclose(np.asarray(ce), np.asarray(dense(w)), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda w: sparse(w, n_valid)[0].sum())(w)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(lambda w: dense(w).sum())(w)), rtol=1e-5, atol=1e-5)
    _, over = sparse(w, n_valid - 3)
    assert int(over) == 3


def test_pairwise_value_loss_against_a_hand_computed_case():
    values = jnp.asarray([2.0, 0.0, 0.0, 1.0, 5.0, 5.0])
    rewards = jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])  # the third pair is (incorrect, correct): left out
    total, n = losses.pairwise_value_loss_sum(values, rewards, jnp.ones(6, bool))
    # -log sigmoid(2 - 0) = log(1 + e^-2) = 0.126928; -log sigmoid(0 - 1) = log(1 + e) = 1.313262
    assert float(n) == 2.0 and float(total) == pytest.approx(0.126928 + 1.313262, abs=1e-5)
    _, n = losses.pairwise_value_loss_sum(values, rewards, jnp.asarray([True, False, True, True, True, True]))
    assert float(n) == 1.0  # a row without output voids its pair
    with pytest.raises(ValueError, match="3 rows"):
        losses.pairwise_value_loss_sum(values[:3], rewards[:3], jnp.ones(3, bool))
    # the final value is the one at each row's last output position
    x = jnp.asarray([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = jnp.asarray([[0, 1, 1, 0], [0, 0, 0, 0]])
    final, has = alignment.last_output(x, mask)
    assert final.tolist()[0] == 3.0 and has.tolist() == [True, False]


def test_clipped_value_loss_and_weight_entropy_against_hand_computed_cases():
    values = jnp.asarray([1.0, 0.0, 0.5])
    anchor = jnp.asarray([0.5, 0.5, 0.5])
    targets = jnp.asarray([0.0, 0.0, 1.0])
    mask = jnp.asarray([True, True, True])
    # eps 0.2: clipped values 0.7, 0.3, 0.5; per token max(0.5 (V - t)^2, 0.5 (Vc - t)^2)
    # = max(0.5, 0.245), max(0, 0.045), max(0.125, 0.125) -> 0.5 + 0.045 + 0.125
    got = losses.clipped_value_loss_sum(values, anchor, targets, mask, 0.2)
    assert float(got) == pytest.approx(0.67, abs=1e-6)
    assert float(losses.clipped_value_loss_sum(values, anchor, targets, mask, 10.0)) == pytest.approx(
        float(losses.value_loss_sum(values, targets, mask))
    )  # a clip wider than every difference is the plain loss
    valid = jnp.asarray([True, True, True, True, False])
    assert float(losses.weight_entropy(jnp.asarray([1.0, 1.0, 1.0, 1.0, 9.0]), valid)) == pytest.approx(1.0)
    assert float(losses.weight_entropy(jnp.asarray([1.0, 0.0, 0.0, 0.0, 9.0]), valid)) == pytest.approx(0.0)
    # p = (1/2, 1/4, 1/4, 0): H = 1.5 log 2, over log 4
    assert float(losses.weight_entropy(jnp.asarray([2.0, 1.0, 1.0, 0.0, 0.0]), valid)) == pytest.approx(0.75)
