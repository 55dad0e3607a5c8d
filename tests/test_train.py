"""Training end to end on the micro models and shipped data (4-device CPU mesh), and step-level equivalences."""

import importlib
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax import jobs, sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.checkpoint.micro import MICRO_MTP
from wmtp_jax.model import create_model
from wmtp_jax.run_config import parse
from wmtp_jax.train import loop
from wmtp_jax.train.objectives import WeightingConfig, make_objective
from wmtp_jax.train.step import OptimizerConfig, StepConfig
from wmtp_jax.train.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
# the micro end-to-end runs project only the valid (position, head) targets onto the 32000-word vocabulary
# (``train.ce_tokens``: the same losses up to summation order, at the cost of the batch's valid targets, 2-4x
# fewer than the positions of its rows); the capacity holds every (position, head) of 4 rows of 512 tokens
MICRO_CE_TOKENS = 4 * 512 * 4
# and pad every batch to one length: each bucket is a compiled step of its own (~5 s of XLA compilation per run
# config on a CPU), and the preset's (256, 512) gave every run two; the loss traces keep the preset's buckets
MICRO_BUCKETS = (512,)
# both as overrides, for micro_config and the tests that run ``python -m wmtp_jax.main``
MICRO_FAST = {"train.ce_tokens": MICRO_CE_TOKENS, "data.buckets": MICRO_BUCKETS}


def micro_config(experiment, shared, workdir, **overrides):
    """``configs/{experiment}.py:micro`` with the session's micro models and data, 4 steps, a checkpoint every 2
    and ``MICRO_FAST``; ``overrides`` (``KEY=VALUE`` with dotted keys) win."""
    sys.path.insert(0, str(REPO))
    c = importlib.import_module(f"configs.{experiment}").get_config("micro")
    values = dict(shared)
    if experiment == "ref_tuning":
        values["model.checkpoint"] = shared["reference.checkpoint"]
    values.update({"workdir": str(workdir), "train.num_steps": 4, "checkpoint.every_steps": 2, **MICRO_FAST})
    values.update(overrides)
    for key, value in values.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    jobs.validate(c)
    return c


def run(experiment, shared, workdir, **overrides):
    with jax.default_matmul_precision("highest"):
        return loop.train(parse(micro_config(experiment, shared, workdir, **overrides)))


def read_metrics(workdir):
    rows = {}
    for line in open(Path(workdir) / "metrics.jsonl"):
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run rewrites the steps after its checkpoint
    return rows


@pytest.fixture(scope="module")
def stage_one(shared, tmp_path_factory):
    """critic (stage 1) and ref_tuning runs whose outputs feed verifiable and rho1."""
    root = tmp_path_factory.mktemp("stage_one")
    return {"critic": run("critic", shared, root / "critic"), "ref_tuning": run("ref_tuning", shared, root / "ref")}


def test_critic_trains_only_the_value_head(stage_one, shared):
    metrics = read_metrics(Path(stage_one["critic"]["final_dir"]).parent)
    assert set(metrics) == {1, 2, 3, 4} and all(math.isfinite(m["value_loss"]) for m in metrics.values())
    assert "value_explained_variance" in metrics[4] and "loss_head_0" not in metrics[4]
    trained = load_model(stage_one["critic"]["final_dir"], sharding.make_mesh())
    start = load_model(next(Path(shared["model.cache_dir"]).glob("mtp_meta-*")), sharding.make_mesh())
    assert np.abs(np.asarray(trained.value_head["kernel"][...])).sum() > 0  # moved from its zero init
    np.testing.assert_array_equal(
        np.asarray(trained.layers.attention.wq[...]), np.asarray(start.layers.attention.wq[...])
    )  # trunk frozen
    np.testing.assert_array_equal(np.asarray(trained.output[...]), np.asarray(start.output[...]))
    # measured on the held-out labelled split (MBPP validation references + mutants: 187 records, batch 4)
    quality = stage_one["critic"]["critic_quality"]
    saved = json.loads((Path(stage_one["critic"]["final_dir"]) / "critic_quality.json").read_text())
    assert saved == json.loads(json.dumps(quality)) and quality["n"] == 184 and 0 < quality["n_correct"] < 184
    assert 0.0 <= quality["auroc"] <= 1.0 and 0.0 <= quality["brier"] <= 1.0 and quality["step"] == 4
    assert "val/critic/auroc" in metrics[2] and "val/critic/brier" in metrics[4]
    assert (Path(stage_one["critic"]["final_dir"]).parent / "critic_reliability.png").is_file()


def test_verifiable_starts_from_the_critic(stage_one, shared, tmp_path):
    init = {"model.init_from": str(stage_one["critic"]["final_dir"])}
    result = run("verifiable", shared, tmp_path / "v", **init, **{"critic.value_clip": 0.2})
    m = read_metrics(tmp_path / "v")
    assert all(math.isfinite(r["loss"]) for r in m.values())
    assert m[1]["value_mean"] != 0.0  # the value head came trained from stage 1 (a fresh one outputs 0)
    assert 0.1 <= m[4]["weight_min"] <= m[4]["weight_max"] <= 5.0 and m[4]["weight_std"] > 0
    assert (Path(result["final_dir"]) / "model_config.json").is_file()
    assert (tmp_path / "v" / "weight_distribution.png").is_file()
    # stability monitors: the value head's distance from stage 1's (0 before the first update), weight entropy
    assert m[1]["critic_param_distance"] == 0.0 < m[4]["critic_param_distance"]
    assert 0.0 < m[4]["weight_entropy"] <= 1.0
    run("verifiable", shared, tmp_path / "anchored", **init, **{"critic.value_clip": 0.2, "critic.anchor_coef": 1e4})
    anchored = read_metrics(tmp_path / "anchored")
    assert anchored[4]["critic_param_distance"] < m[4]["critic_param_distance"]  # the anchor holds the head back


def test_verifiable_without_a_trained_critic_is_a_configuration_error(shared, tmp_path):
    with pytest.raises(ValueError, match="the verifiable objective needs a trained critic"):
        micro_config("verifiable", shared, tmp_path / "v")
    micro_config("verifiable", shared, tmp_path / "v", **{"critic.allow_untrained": True})


def test_rho1_with_the_ref_tuning_output_as_reference(stage_one, shared, tmp_path):
    """ref_tuning writes final/ and its Hugging Face copy final_hf/ (export.hf); rho1 takes the HF copy."""
    ref_dir = Path(stage_one["ref_tuning"]["final_dir"])
    assert load_model(ref_dir, sharding.make_mesh()).cfg.n_future_tokens == 1
    hf_dir = ref_dir.parent / "final_hf"
    assert (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file()
    run("rho1", shared, tmp_path / "r", **{"reference.checkpoint": str(hf_dir)})
    m = read_metrics(tmp_path / "r")
    # hard top-60% selection per head over the global batch
    assert all(abs(r["weight_frac_selected"] - 0.6) < 0.02 for r in m.values())
    assert {f"loss_head_{k}" for k in range(4)} <= set(m[4])


def test_baseline_loss_decreases_and_logs_to_mlflow(shared, tmp_path):
    result = run("baseline", shared, tmp_path / "b", **{"train.num_steps": 12, "checkpoint.every_steps": 6})
    losses = [result["losses"][s] for s in range(1, 13)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
    m = read_metrics(tmp_path / "b")
    for key in ("grad_norm", "learning_rate", "tokens_per_s", "weight_mean", "weight_frac_selected", "ce_head_3"):
        assert key in m[12]
    assert m[1]["learning_rate"] == 0.0 and m[3]["learning_rate"] > 0  # warmup
    from mlflow import MlflowClient

    from wmtp_jax.tracking import local_tracking_uri

    client = MlflowClient(local_tracking_uri(tmp_path / "b"))
    run_id = json.loads((tmp_path / "b" / "mlflow_run.json").read_text())["run_id"]
    logged = client.get_run(run_id)
    assert logged.data.params["train.num_steps"] == "12" and "loss" in logged.data.metrics
    assert "val_loss" in logged.data.metrics and logged.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"weight_distribution.png", "config.json"}
    steps = sorted(int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 12
    # evaluation restores the policy from the workdir's latest train state (params only) onto 1 device
    from wmtp_jax.checkpoint.policy import load_policy

    restored, description = load_policy(
        tmp_path / "b", sharding.make_mesh(devices=jax.devices()[:1]), cache_dir=shared["model.cache_dir"]
    )
    assert "step 12" in description
    final = load_model(result["final_dir"], sharding.make_mesh())
    for a, b in zip(jax.tree.leaves(nnx.state(restored)), jax.tree.leaves(nnx.state(final))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_control_shuffles_weights_but_keeps_their_statistics(stage_one, shared, tmp_path):
    ref = {"reference.checkpoint": str(stage_one["ref_tuning"]["final_dir"]), "train.num_steps": 1}
    run("rho1", shared, tmp_path / "plain", **ref)
    run("rho1", shared, tmp_path / "control", **ref, **{"weighting.control": True})
    a, b = read_metrics(tmp_path / "plain")[1], read_metrics(tmp_path / "control")[1]
    assert a["weight_frac_selected"] == pytest.approx(b["weight_frac_selected"])
    assert a["loss"] != b["loss"]  # different tokens selected


def test_non_finite_updates_are_skipped_then_the_run_stops(shared, tmp_path):
    with pytest.raises(loop.NonFiniteError, match="2 consecutive non-finite"):
        run(
            "verifiable",
            shared,
            tmp_path / "nan",
            **{"weighting.value_coef": float("nan"), "train.max_nonfinite_steps": 2, "critic.allow_untrained": True},
        )
    m = read_metrics(tmp_path / "nan")
    assert m[1]["nonfinite_updates"] == 1 and m[2]["nonfinite_updates"] == 2
    assert (tmp_path / "nan" / "checkpoints" / "2").is_dir()


def test_a_non_finite_step_leaves_parameters_and_optimizer_state_untouched():
    """The skip is exact (bit for bit) in the production step: jitted with donated state."""
    mesh = sharding.make_mesh()
    model = create_model(MICRO_MTP, mesh, seed=0)
    batch = jax.device_put(_batch(), sharding.batch_sharding(mesh))

    def trainer(value_coef):
        return _trainer(model, "verifiable", mesh, StepConfig(ce_chunk=16), value_coef=value_coef)

    state = trainer(0.5).initial_state()
    state, metrics = trainer(0.5).step(state, batch)  # a real update first: non-zero Adam moments
    assert bool(metrics["finite"])
    before = jax.device_get({"params": state.params, "opt_state": state.opt_state})
    state, metrics = trainer(float("nan")).step(state, batch)
    assert not bool(metrics["finite"]) and int(state.step) == 2
    after = jax.device_get({"params": state.params, "opt_state": state.opt_state})
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(after["opt_state"]))


# ---------------------------------------------------------------------------------------------- step level
def _batch(b=8, length=48, seed=0):
    rng = np.random.RandomState(seed)
    lm = np.zeros((b, length), np.int32)
    lm[:, 12:40] = 1
    seg = np.zeros((b, length), np.int32)
    seg[:, :40] = 1
    return {
        "tokens": rng.randint(3, MICRO_MTP.vocab_size, (b, length)).astype(np.int32),
        "loss_mask": lm,
        "rewards": np.repeat(rng.randint(0, 2, (b, 1)).astype(np.float32), length, 1),
        "segment_ids": seg,
        "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
    }


def _trainer(model, objective, mesh, step_config, **weighting):
    return Trainer(
        make_objective(objective, WeightingConfig(**weighting)),
        model,
        mesh=mesh,
        step_config=step_config,
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=0, num_steps=10),
    )


def _one_step(mesh, experiment="verifiable", accum=1, batch=None):
    model = create_model(MICRO_MTP, mesh, seed=0)
    model.value_head["kernel"][...] = 0.05 * jnp.ones_like(model.value_head["kernel"][...])  # non-trivial TD weights
    trainer = _trainer(
        model, experiment, mesh, StepConfig(grad_accum_steps=accum, head_weights=(1.0, 0.5, 0.5, 0.25), ce_chunk=16)
    )
    batch = jax.device_put(batch or _batch(), sharding.batch_sharding(mesh))
    with jax.default_matmul_precision("highest"):
        state, metrics = trainer.step(trainer.initial_state(), batch)
    return jax.device_get(state.params), jax.device_get(metrics)


def test_head_reduce_mean_divides_the_summed_head_losses_by_the_head_count():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    batch = jax.device_put(_batch(), sharding.batch_sharding(mesh))
    losses = {}
    for reduce in ("sum", "mean"):
        model = create_model(MICRO_MTP, mesh, seed=0)
        trainer = _trainer(model, "baseline", mesh, StepConfig(head_reduce=reduce, ce_chunk=16), scheme="dft")
        with jax.default_matmul_precision("highest"):
            losses[reduce] = jax.device_get(trainer.step(trainer.initial_state(), batch)[1])["loss"]
    assert losses["mean"] == pytest.approx(losses["sum"] / MICRO_MTP.n_future_tokens, rel=1e-6)
    assert "head_reduce" in " ".join(StepConfig(head_reduce="max").problems())


def _assert_params_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_sharded_step_equals_unsharded():
    single = _one_step(sharding.make_mesh(devices=jax.devices()[:1]))
    for mesh in (sharding.make_mesh(fsdp=4), sharding.make_mesh(data=2, fsdp=2)):
        sharded = _one_step(mesh)
        np.testing.assert_allclose(sharded[1]["loss"], single[1]["loss"], rtol=1e-6)
        np.testing.assert_allclose(sharded[1]["grad_norm"], single[1]["grad_norm"], rtol=1e-5)
        _assert_params_close(sharded[0], single[0], atol=1e-6)


@pytest.mark.parametrize("experiment", ["baseline", "verifiable"])
def test_gradient_accumulation_equals_one_big_batch(experiment):
    mesh = sharding.make_mesh()
    batch = _batch(b=16)  # 4 micro-batches of 4 rows, one row per device each
    big = _one_step(mesh, experiment, accum=1, batch=batch)
    accumulated = _one_step(mesh, experiment, accum=4, batch=batch)
    np.testing.assert_allclose(accumulated[1]["loss"], big[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(accumulated[1]["grad_norm"], big[1]["grad_norm"], rtol=1e-5)
    _assert_params_close(accumulated[0], big[0], atol=1e-6)


def test_config_problems_are_reported_together(shared, tmp_path):
    c = micro_config("rho1", shared, tmp_path)
    c.train.batch_size = 6
    c.train.learning_rate = -1.0
    c.weighting.rho1_select = "sometimes"
    c.mesh.tensor = 3
    found = jobs.problems(c, n_devices=4)
    text = "\n".join(found)
    assert "train.learning_rate=-1.0: expected a positive number" in text
    assert "weighting.rho1_select='sometimes': expected one of ['hard', 'soft']" in text
    assert "mesh=(1, -1, 3)" in text
    c.mesh.tensor = 1
    found = jobs.problems(c, n_devices=4)
    assert any("train.batch_size=6: must split into" in p for p in found)


def test_precomputed_tables_rho1_reference_ce_and_token_cleaning(stage_one, shared, tmp_path):
    """A precomputed reference CE gives the same Rho-1 step as the in-step reference; Token Cleaning's labels from
    the base and the tuned reference train and evaluate."""
    from wmtp_jax.train.reference_ce import precompute_reference_ce

    ref_dir = str(stage_one["ref_tuning"]["final_dir"])
    run("rho1", shared, tmp_path / "in_step", **{"reference.checkpoint": ref_dir, "train.num_steps": 2})
    train_jsonl = str(Path(shared["data.cache_dir"]) / "mbpp" / "train.jsonl")
    with jax.default_matmul_precision("highest"):
        prefix = precompute_reference_ce(
            ref_dir, train_jsonl, batch_size=8, buckets=MICRO_BUCKETS, dtype="float32", progress=False
        )
    run(
        "rho1",
        shared,
        tmp_path / "table",
        **{"weighting.rho1_reference_ce": prefix, "train.num_steps": 2, "reference.checkpoint": "/nonexistent"},
    )
    a, b = read_metrics(tmp_path / "in_step"), read_metrics(tmp_path / "table")
    for s in (1, 2):
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5)
        assert b[s]["weight_frac_selected"] == pytest.approx(a[s]["weight_frac_selected"])

    # Token Cleaning: the base (the reference's starting point) scored against the tuned reference, then a
    # baseline run on the cleaned labels that trains and evaluates
    from wmtp_jax.checkpoint import ensure_orbax
    from wmtp_jax.train.reference_ce import token_cleaning_labels

    base = json.loads((Path(ref_dir).parent / "config.json").read_text())["model"]["checkpoint"]
    with jax.default_matmul_precision("highest"):
        precompute_reference_ce(
            ensure_orbax(base, tmp_path / "converted"),
            train_jsonl,
            batch_size=8,
            buckets=MICRO_BUCKETS,
            dtype="float32",
            progress=False,
            name="base_ce",
        )
    found = token_cleaning_labels(train_jsonl, ratio=0.6, max_length=512, progress=False)
    assert found["kept"] == math.ceil(0.6 * found["response_tokens"]) > 0
    evaluation = {"train.eval_at_end": True, "eval.benchmarks": ("humaneval",), "eval.limit": 1}
    scheme = {"weighting.scheme": "token_cleaning", "weighting.token_labels": prefix, "train.num_steps": 2}
    run("baseline", shared, tmp_path / "cleaned", **scheme, **evaluation)
    m = read_metrics(tmp_path / "cleaned")[2]
    assert 0.3 < m["weight_frac_selected"] < 0.9 and m["loss_head_0"] < m["ce_head_0"]
    assert (
        "pass@1" in json.loads((tmp_path / "cleaned" / "eval" / "results.json").read_text())["benchmarks"]["humaneval"]
    )


def test_remat_step_matches_no_remat():
    """Remat policies, and the production memory layout (scanned trunk and heads, chunked attention), give the
    same sharded train step."""
    mesh = sharding.make_mesh()
    results = []
    layouts = [
        dict(remat="none"),
        dict(remat="full"),
        dict(remat="dots"),
        dict(remat="full", scan_layers=True, attention="chunked", attention_chunk=8),
    ]
    for layout in layouts:
        cfg = MICRO_MTP.replace(**layout)
        trainer = _trainer(create_model(cfg, mesh, seed=0), "baseline", mesh, StepConfig(ce_chunk=16))
        with jax.default_matmul_precision("highest"):
            state, metrics = trainer.step(
                trainer.initial_state(), jax.device_put(_batch(), sharding.batch_sharding(mesh))
            )
        results.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    for loss, norm in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6) and norm == pytest.approx(results[0][1], rel=1e-5)


def test_token_budget_batches_and_epochs_set_the_schedule(shared, tmp_path):
    """``train.batch_tokens`` fills packed rows of max(data.buckets) up to the global budget; ``train.num_epochs``
    replaces num_steps (epochs of the strategy's draws, counted in tokens when packing); config.json records both."""
    from wmtp_jax.data.records import RecordIndex, index_path

    overrides = {"data.pack": True, "data.buckets": (512,), "train.batch_tokens": 2048, "train.num_epochs": 0.05}
    run("baseline", shared, tmp_path, **overrides, **{"checkpoint.every_steps": 100})
    saved = json.loads((tmp_path / "config.json").read_text())["train"]
    index = RecordIndex.load(index_path(Path(shared["data.cache_dir"]) / "mbpp" / "train.jsonl"))
    records_per_row = 512 / np.minimum(index.length, 512).mean()
    expected = math.ceil(0.05 * index.is_correct.sum() / (4 * records_per_row))
    assert saved["batch_size"] == 4 and saved["num_steps"] == expected > 1
    rows = read_metrics(tmp_path)
    assert sorted(rows) == list(range(1, expected + 1))
    assert all(1024 < rows[s]["tokens"] <= 2048 for s in rows)  # packed rows, within the budget

    c = micro_config("baseline", shared, tmp_path / "bad")
    c.train.batch_tokens = 1000
    text = "\n".join(jobs.problems(c, n_devices=4))
    assert "data.pack=False: expected True when train.batch_tokens > 0" in text
    assert "train.batch_tokens=1000: expected a multiple of the packed row length max(data.buckets)=512" in text
