"""The Trainer's hook protocol and the checkpoint-committed event, on a tiny model (fast)."""

import jax
import numpy as np
import pytest

from wmtp_jax import sharding
from wmtp_jax.checkpoint.train_state import CheckpointConfig
from wmtp_jax.model import ModelConfig, create_model
from wmtp_jax.train import hooks
from wmtp_jax.train.objectives import OBJECTIVES, make_objective
from wmtp_jax.train.step import OptimizerConfig, StepConfig
from wmtp_jax.train.trainer import Hook, NonFiniteError, Trainer

TINY = ModelConfig(dim=16, n_layers=3, n_heads=2, n_kv_heads=1, vocab_size=128, multiple_of=16, n_future_tokens=2)


class Batches:
    """An iterator of fixed random batches with a Grain-like ``get_state`` / ``set_state``."""

    def __init__(self, mesh, rows=4, length=16):
        rng = np.random.RandomState(0)
        tokens = rng.randint(3, TINY.vocab_size, (rows, length)).astype(np.int32)
        loss_mask = np.zeros((rows, length), np.int32)
        loss_mask[:, 6:] = 1
        batch = {
            "tokens": tokens,
            "loss_mask": loss_mask,
            "rewards": np.ones((rows, length), np.float32),
            "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
        }
        self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        self.position = 0

    def __next__(self):
        self.position += 1
        return self.batch

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


class Recorder(Hook):
    def __init__(self):
        self.steps, self.ends, self.metrics = [], [], []

    def on_step(self, trainer, event):
        self.steps.append(event.step)
        self.metrics.append(event.metrics)

    def on_end(self, trainer, event, status):
        self.ends.append((event.step, status))


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh()


def tiny_trainer(mesh, objective="baseline", ce_tokens=0, **weighting):
    from wmtp_jax.train.objectives import WeightingConfig

    return Trainer(
        make_objective(objective, WeightingConfig(**weighting)),
        create_model(TINY, mesh),
        mesh=mesh,
        step_config=StepConfig(ce_chunk=8, ce_tokens=ce_tokens),
        optimizer=OptimizerConfig(learning_rate=1e-2, num_steps=10),
        max_nonfinite_steps=2,
    )


def test_hooks_run_every_n_steps_and_at_the_last_step(mesh):
    trainer = tiny_trainer(mesh)
    every_three, every_step = Recorder(), Recorder()
    trainer.add_hook(every_three, every=3)
    trainer.add_hook(every_step)
    state = trainer.run(trainer.initial_state(), Batches(mesh), num_steps=5)
    assert int(state.step) == 5
    assert every_three.steps == [3, 5] and every_step.steps == [1, 2, 3, 4, 5]
    assert every_three.ends == [(5, "FINISHED")] == every_step.ends


def test_too_many_non_finite_steps_stop_the_run_and_tell_the_hooks(mesh):
    trainer = tiny_trainer(mesh, "verifiable", value_coef=float("nan"))
    recorder = Recorder()
    trainer.add_hook(recorder)
    with pytest.raises(NonFiniteError, match="2 consecutive non-finite"):
        trainer.run(trainer.initial_state(), Batches(mesh), num_steps=5)
    assert recorder.steps == [1, 2] and recorder.ends == [(2, "STOPPED")]


@pytest.mark.parametrize("async_save", [True, False])
def test_checkpoint_committed_event_follows_each_finished_checkpoint(mesh, tmp_path, async_save):
    trainer = tiny_trainer(mesh)
    batches = Batches(mesh)
    checkpoints = hooks.Checkpoints(
        tmp_path / "ckpt", batches, CheckpointConfig(every_steps=2, keep=5, async_save=async_save)
    )
    committed = []

    def on_commit(step, directory):  # the checkpoint is complete when the event arrives
        committed.append((step, (directory / "state").is_dir() and (directory / "data").is_dir()))

    checkpoints.on_commit.append(on_commit)
    trainer.add_hook(checkpoints)  # it saves every checkpoint.every_steps and at the last step
    trainer.run(trainer.initial_state(), batches, num_steps=5)
    assert sorted(committed) == [(2, True), (4, True), (5, True)]
    # and the committed state restores, with the iterator position saved beside it
    resumed = Batches(mesh)
    restored = hooks.Checkpoints(tmp_path / "ckpt", resumed).restore(tiny_trainer(mesh))
    assert int(restored.step) == 5 and resumed.position == 5


def test_every_objective_is_registered_under_its_config_name():
    assert set(OBJECTIVES) == {"baseline", "critic", "verifiable", "rho1", "ref_tuning"}
    assert make_objective("critic").trains_value and not make_objective("critic").trains_policy
    assert make_objective("rho1").needs_reference
    with pytest.raises(ValueError, match="objective 'rho2': expected one of"):
        make_objective("rho2")


def test_strength_zero_gives_the_unweighted_baseline_loss_exactly(mesh):
    """weighting.strength = 0 moves every weight to 1 and the Rho-1 normaliser to the valid count."""
    from wmtp_jax.train.objectives import WeightingConfig

    batch = Batches(mesh).batch
    reference = create_model(TINY.replace(n_future_tokens=1, n_layers=2), mesh, seed=1)

    def loss(objective, **weighting):  # a fresh model each time: the step donates the trained parameters
        trainer = Trainer(
            make_objective(objective, WeightingConfig(**weighting)),
            create_model(TINY, mesh),
            mesh=mesh,
            reference=reference if objective == "rho1" else None,
            step_config=StepConfig(ce_chunk=8),
        )
        return float(trainer.step(trainer.initial_state(), batch)[1]["loss"])

    baseline = loss("baseline")
    assert loss("rho1", strength=0.0) == baseline
    assert loss("rho1", strength=0.0, rho1_scheme="seed") == baseline
    assert loss("rho1") != baseline  # the weights do matter at strength 1


class Scripted(Hook):
    """Puts a scripted metric into the event at the steps it names (as a validation hook would)."""

    def __init__(self, values):
        self.values = values

    def on_step(self, trainer, event):
        if event.step in self.values:
            event.metrics["score"] = self.values[event.step]


def test_early_stopping_stops_at_the_right_step_and_exports_the_best_checkpoint(mesh, tmp_path):
    import json

    from wmtp_jax.checkpoint import load_model

    # measured every 2 steps; best 0.7 at step 4; 0.69 at 6 is within min_delta, 0.5 at 8: patience 2 runs out
    trainer = tiny_trainer(mesh)
    batches = Batches(mesh)
    scripted = Scripted({2: 0.5, 4: 0.7, 6: 0.69, 8: 0.5, 10: 0.9})
    config = CheckpointConfig(every_steps=100, keep=1, best_metric="score", best_mode="max", async_save=False)
    checkpoints = hooks.Checkpoints(tmp_path / "ckpt", batches, config)
    saved = {}
    checkpoints.on_commit.append(lambda step, directory: saved.setdefault(step, directory))
    recorder = Recorder()
    for hook in (
        scripted,
        hooks.EarlyStopping(hooks.EarlyStoppingConfig("score", "max", 2, 0.05)),
        checkpoints,
        hooks.ExportFinal(tmp_path / "final", checkpoints, "best"),
        recorder,
    ):
        trainer.add_hook(hook)
    trainer.run(trainer.initial_state(), batches, num_steps=10)
    assert recorder.steps[-1] == 8 and recorder.ends == [(8, "FINISHED")]
    assert "early stopping at step 8" in trainer.stop_reason
    selection = json.loads((tmp_path / "final" / "selection.json").read_text())
    assert selection["final"] == "best" and selection["step"] == 4 and selection["value"] == 0.7
    best = checkpoints.restore(tiny_trainer(mesh), 4)
    final = load_model(tmp_path / "final", mesh)
    np.testing.assert_array_equal(
        np.asarray(final.output.kernel[...]), np.asarray(best.params["output"]["kernel"][...])
    )
    assert sorted(saved) == [2, 4, 6, 8]  # each measurement saved; step 4 (the best) and 8 (the last) are kept
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["4", "8"]


def test_valid_targets_only_ce_trains_like_the_dense_ce_and_refuses_to_truncate(mesh):
    """``train.ce_tokens``: 4 rows x 10 output tokens x 2 heads = 80 valid targets fit in 96."""
    losses = []
    for ce_tokens in (0, 96):
        trainer, recorder = tiny_trainer(mesh, ce_tokens=ce_tokens), Recorder()
        trainer.add_hook(recorder)
        trainer.run(trainer.initial_state(), Batches(mesh), num_steps=3)
        losses.append([m["loss"] for m in recorder.metrics])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    trainer, recorder = tiny_trainer(mesh, ce_tokens=40), Recorder()
    trainer.add_hook(recorder)
    with pytest.raises(ValueError, match="40 more valid targets than train.ce_tokens=40"):
        trainer.run(trainer.initial_state(), Batches(mesh), num_steps=3)
    assert recorder.steps == [] and recorder.ends == [(0, "FAILED")]


def test_a_separate_critic_is_frozen_and_gives_the_td_weights(mesh):
    """verifiable with ``critic.model``: the critic runs in the step (as the Rho-1 reference does); its
    parameters never change, the policy's own value head is not trained, and the TD weights follow the critic."""
    from flax import nnx

    from wmtp_jax.train.objectives import CriticConfig, WeightingConfig

    critic = create_model(TINY.replace(n_future_tokens=1), mesh, seed=1)
    critic.value_head.kernel[...] = jax.random.normal(jax.random.key(0), critic.value_head.kernel.shape) * 0.5
    objective = make_objective("verifiable", WeightingConfig(), CriticConfig(model="a/path"))
    assert objective.needs_reference and objective.separate_critic and not objective.trains_value_head
    trainer = Trainer(
        objective,
        create_model(TINY, mesh),
        mesh=mesh,
        step_config=StepConfig(ce_chunk=8),
        optimizer=OptimizerConfig(learning_rate=1e-2, num_steps=10),
        reference=critic,
    )
    before = jax.tree.map(np.asarray, nnx.state(critic))
    state, batches = trainer.initial_state(), Batches(mesh)
    assert not any("value_head" in str(path) for path, _ in nnx.to_flat_state(state.params))
    for _ in range(3):
        state, metrics = trainer.step(state, next(batches))
    after = jax.tree.map(np.asarray, trainer.reference_state)
    jax.tree.map(np.testing.assert_array_equal, after, before)
    assert "value_loss" not in metrics and float(metrics["value_mean"]) != 0.0  # values come from the critic
    assert float(metrics["weight_std"]) > 0  # TD-exp weights vary with the critic's values
    with pytest.raises(ValueError, match="needs a reference model"):
        Trainer(objective, create_model(TINY, mesh), mesh=mesh)
