"""Metadata-only sampling: ratios, curriculum proportions, pairs, determinism, shards, errors."""

import numpy as np
import pytest

from wmtp_jax.data.records import IndexBuilder
from wmtp_jax.data.sampling import SamplingConfig, SamplingError, build_plan, epoch_size, pairs_epoch, shard_plan


def synthetic_index(n_problems=300, per_problem=10, correct_frac=0.3, seed=0):
    rng = np.random.default_rng(seed)
    b = IndexBuilder()
    offset = 0
    for p in range(n_problems):
        difficulty = 1 + p % 11
        for _ in range(per_problem):
            b.add(offset, bool(rng.random() < correct_frac), int(rng.integers(50, 2000)), f"p{p}", difficulty)
            offset += 1000
    return b.build()


INDEX = synthetic_index()


def test_index_roundtrip_and_size(tmp_path):
    INDEX.save(tmp_path / "i.npz")
    from wmtp_jax.data.records import RecordIndex

    back = RecordIndex.load(tmp_path / "i.npz")
    assert back.records.dtype.itemsize == 8
    np.testing.assert_array_equal(back.offsets(), np.arange(3000) * 1000)
    np.testing.assert_array_equal(back.difficulty(), np.repeat(1 + np.arange(300) % 11, 10))
    assert back.problem_id[back.problem_of([25])[0]] == "p2"


def test_correct_strategy_covers_each_correct_record_once_per_epoch():
    correct = np.flatnonzero(INDEX.is_correct)
    plan = build_plan(INDEX, SamplingConfig("correct"), 2 * len(correct), seed=1)
    assert sorted(plan[: len(correct)]) == sorted(correct) and sorted(plan[len(correct) :]) == sorted(correct)
    assert not np.array_equal(plan[: len(correct)], plan[len(correct) :])  # reshuffled per epoch


def test_balanced_ratio_and_no_repeats_within_epoch():
    n_correct, n_incorrect = int(INDEX.is_correct.sum()), int((~INDEX.is_correct).sum())
    for ratio in (0.5, 0.25):
        epoch = int(min(n_correct / ratio, n_incorrect / (1 - ratio)))
        plan = build_plan(INDEX, SamplingConfig("balanced", correct_ratio=ratio), epoch, seed=0)
        assert abs(INDEX.is_correct[plan].mean() - ratio) <= 1 / epoch  # exact per epoch
        assert abs(INDEX.is_correct[plan[:400]].mean() - ratio) < 0.06  # and close in any window
    epoch = build_plan(INDEX, SamplingConfig("balanced"), 1, seed=0)  # first record of epoch 0
    n_correct = int(INDEX.is_correct.sum())
    full = build_plan(INDEX, SamplingConfig("balanced"), 2 * n_correct, seed=0)
    assert full[0] == epoch[0] and len(np.unique(full)) == len(full)  # one epoch = 2 x the minority class


def test_balanced_errors_and_repeat():
    all_correct = synthetic_index(correct_frac=1.0)
    with pytest.raises(SamplingError, match="has 3000 correct and 0 incorrect records"):
        build_plan(all_correct, SamplingConfig("balanced"), 10, seed=0)


def test_curriculum_proportions_follow_the_schedule():
    n = 10000
    plan = build_plan(INDEX, SamplingConfig("curriculum"), n, seed=0)
    d = INDEX.difficulty(plan)
    bins = np.select([d <= 3, d <= 7], [0, 1], 2)
    for (lo, hi), expected in (
        ((0, 3000), (0.7, 0.3, 0.0)),
        ((3000, 7000), (0.3, 0.6, 0.1)),
        ((7000, 10000), (0.1, 0.5, 0.4)),
    ):
        got = np.bincount(bins[lo:hi], minlength=3) / (hi - lo)
        np.testing.assert_allclose(got, expected, atol=0.01)


def test_curriculum_empty_bin_error_names_counts():
    easy_only = synthetic_index(n_problems=3)  # difficulties 1, 2, 3 only
    with pytest.raises(
        SamplingError,
        match=r"difficulty bin \(4, 7\), but it is empty \(records per bin: "
        r"\{'1-3': 30, '4-7': 0, '8-11': 0\}\)",
    ):
        build_plan(easy_only, SamplingConfig("curriculum"), 100, seed=0)


def test_pairs_are_same_problem_correct_then_incorrect():
    plan = build_plan(INDEX, SamplingConfig("pairs"), 400, seed=0).reshape(-1, 2)
    assert INDEX.is_correct[plan[:, 0]].all() and not INDEX.is_correct[plan[:, 1]].any()
    np.testing.assert_array_equal(INDEX.problem_of(plan[:, 0]), INDEX.problem_of(plan[:, 1]))


def test_plans_are_deterministic_in_the_seed():
    for strategy in ("correct", "balanced", "curriculum", "pairs"):
        a = build_plan(INDEX, SamplingConfig(strategy), 500, seed=3)
        b = build_plan(INDEX, SamplingConfig(strategy), 500, seed=3)
        c = build_plan(INDEX, SamplingConfig(strategy), 500, seed=4)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_process_shards_are_disjoint_and_form_the_global_batch():
    plan = build_plan(INDEX, SamplingConfig("all"), 64, seed=0)
    shards = [shard_plan(plan, global_batch=8, process_index=p, process_count=2) for p in range(2)]
    assert not set(shards[0]) & set(shards[1])
    rebuilt = np.concatenate([np.stack([s.reshape(-1, 4)[k] for s in shards]).ravel() for k in range(8)])
    np.testing.assert_array_equal(rebuilt, plan)
    with pytest.raises(SamplingError, match="not divisible by 3 processes"):
        shard_plan(plan, 8, 0, 3)


def test_invalid_sampling_config():
    with pytest.raises(SamplingError, match="correct_ratio=1.5"):
        build_plan(INDEX, SamplingConfig("balanced", correct_ratio=1.5), 10, seed=0)
    with pytest.raises(SamplingError, match="strategy='best'"):
        build_plan(INDEX, SamplingConfig("best"), 10, seed=0)


def test_difficulty_range_restricts_every_strategy_and_epoch_sizes_count_draws():
    """``difficulty_range`` (e.g. the critic's stage-1 range) keeps every strategy inside it; ``epoch_size`` is the
    number of draws after which a strategy starts repeating."""
    easy = SamplingConfig("correct", difficulty_range=(1, 3))
    in_range = (INDEX.difficulty() >= 1) & (INDEX.difficulty() <= 3)
    for strategy in ("correct", "all", "balanced", "curriculum", "pairs"):
        cfg = SamplingConfig(strategy, difficulty_range=(1, 3), schedule=((0.0, (1.0, 0.0, 0.0)),))
        plan = build_plan(INDEX, cfg, 600, seed=0)
        assert set(np.unique(INDEX.difficulty(plan))) <= {1, 2, 3}, strategy
    n_correct = int((INDEX.is_correct & in_range).sum())
    assert epoch_size(INDEX, easy) == n_correct
    plan = build_plan(INDEX, easy, n_correct, seed=0)
    assert len(set(plan)) == n_correct  # one epoch: every eligible record exactly once
    assert epoch_size(INDEX, SamplingConfig("all")) == len(INDEX)
    n_c, n_i = int(INDEX.is_correct.sum()), int((~INDEX.is_correct).sum())
    assert epoch_size(INDEX, SamplingConfig("balanced", correct_ratio=0.5)) == 2 * min(n_c, n_i)
    both = sum(0 < INDEX.is_correct[a:b].sum() < b - a for a, b in zip(INDEX.problem_start, INDEX.problem_start[1:]))
    assert epoch_size(INDEX, SamplingConfig("pairs")) == 2 * both == len(pairs_epoch(INDEX, seed=0, epoch=0))
    bins = SamplingConfig("curriculum", bins=((1, 2), (5, 5)), schedule=((0.0, (0.5, 0.5)),))
    assert epoch_size(INDEX, bins) == int(np.isin(INDEX.difficulty(), (1, 2, 5)).sum())
    with pytest.raises(SamplingError, match=r"difficulty_range=\(5, 1\)"):
        build_plan(INDEX, SamplingConfig("all", difficulty_range=(5, 1)), 10, seed=0)
    with pytest.raises(SamplingError, match="no eligible record"):
        build_plan(INDEX, SamplingConfig("all", difficulty_range=(20, 30)), 10, seed=0)
