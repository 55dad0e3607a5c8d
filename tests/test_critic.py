"""The verifiable critic end to end on the micro models (4-device CPU mesh): the pairwise value loss, a separate
value model (restored from Hugging Face and Meta layouts, trained in stage 1, frozen in stage 2) and the MLP head.
A file of its own so that the two test workers share the training tests."""

import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train import micro_config, read_metrics, run

from wmtp_jax import jobs, sharding
from wmtp_jax.checkpoint import load_model


def test_pairwise_critic_trains_on_correct_incorrect_pairs(shared, tmp_path):
    """critic stage 1 with the Bradley-Terry value loss on the ``pairs`` strategy's (correct, incorrect) rows."""
    pairwise = {"data.strategy": "pairs", "weighting.value_loss": "pairwise", "train.num_steps": 3}
    run("critic", shared, tmp_path / "p", **pairwise, **{"checkpoint.every_steps": 3})
    m = read_metrics(tmp_path / "p")
    assert all(r["value_pairs"] == 2.0 and math.isfinite(r["value_loss"]) for r in m.values())  # batch 4 = 2 pairs
    assert m[1]["value_loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # zero-initialised head: margin 0
    c = micro_config("critic", shared, tmp_path / "bad")
    c.weighting.value_loss = "pairwise"
    text = "\n".join(jobs.problems(c, n_devices=4))
    assert "data.strategy='balanced': expected 'pairs' with weighting.value_loss='pairwise'" in text


def test_separate_critic_from_hf_and_meta_layouts_gives_the_same_values_on_1_and_4_devices(shared):
    """A separate value model restored from the Hugging Face layout (micro reference) and from Meta's (micro MTP
    model), with a non-zero value head, gives the same final values on a 1-device and a 4-device mesh."""
    from flax import nnx

    from wmtp_jax.checkpoint import ensure_orbax
    from wmtp_jax.eval.critic_quality import final_values
    from wmtp_jax.sharding import global_batch

    rng = np.random.RandomState(0)
    tokens = rng.randint(3, 1000, (4, 24)).astype(np.int32)
    mask = np.zeros((4, 24), np.int32)
    mask[:, 8:20] = 1
    batch = {
        "tokens": tokens,
        "loss_mask": mask,
        "rewards": np.ones((4, 24), np.float32),
        "segment_ids": (np.arange(24) < 20).astype(np.int32)[None].repeat(4, 0),
        "positions": np.tile(np.arange(24, dtype=np.int32), (4, 1)),
    }
    for layout in ("reference.checkpoint", "model.checkpoint"):  # HF, Meta
        directory = ensure_orbax(shared[layout], shared["model.cache_dir"])
        got = []
        for mesh in (sharding.make_mesh(devices=jax.devices()[:1]), sharding.make_mesh()):
            critic = load_model(directory, mesh, dtype="float32", param_dtype="float32")
            kernel = critic.value_head.kernel
            kernel[...] = jax.device_put(
                np.linspace(-1, 1, kernel.size, dtype=np.float32).reshape(kernel.shape), kernel.sharding
            )
            graphdef, state = nnx.split(critic)
            with jax.default_matmul_precision("highest"):
                values, _, ok = final_values(graphdef, (state,), global_batch(batch, mesh))
            got.append(np.asarray(values))
            assert np.asarray(ok).all()
        assert np.abs(got[0]).max() > 0
        np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-5)


def test_separate_critic_stage_one_to_stage_two_by_path(shared, tmp_path):
    """Stage 1 trains the value head of a separate micro LLaMA (critic.model: the Hugging Face micro reference);
    its final/ is given to stage 2 by path, where it runs frozen and its values make the TD weights."""
    stage = {"train.num_steps": 3, "checkpoint.every_steps": 3}
    one = run("critic", shared, tmp_path / "critic", **{"critic.model": shared["reference.checkpoint"]}, **stage)
    final = Path(one["final_dir"])
    assert json.loads((final / "model_config.json").read_text())["model"]["n_future_tokens"] == 1  # the critic
    assert one["critic_quality"]["n"] == 184
    two = run("verifiable", shared, tmp_path / "v", **{"critic.model": str(final), "critic.dtype": "float32"}, **stage)
    m = read_metrics(tmp_path / "v")
    assert "value_loss" not in m[1] and m[1]["value_mean"] != 0.0  # frozen, and trained in stage 1
    assert m[3]["weight_std"] > 0 and (Path(two["final_dir"]) / "model_config.json").is_file()
    # critic.co_train: the critic's value head keeps learning in stage 2 (value loss on its values), resumes
    # exactly from a checkpoint, and is written to final/critic
    co = {"critic.model": str(final), "critic.co_train": True, "train.num_steps": 3, "checkpoint.every_steps": 2}
    co["checkpoint.async_save"] = False
    full = run("verifiable", shared, tmp_path / "co", **co)
    shutil.copytree(tmp_path / "co", tmp_path / "cut")
    for later in ("checkpoints/3", "final"):
        shutil.rmtree(tmp_path / "cut" / later)
    run("verifiable", shared, tmp_path / "cut", **co)
    a, b = read_metrics(tmp_path / "co"), read_metrics(tmp_path / "cut")
    assert a[3]["loss"] == b[3]["loss"] and a[3]["value_loss"] == b[3]["value_loss"]  # bit-identical after resume
    assert all(math.isfinite(a[s]["value_loss"]) for s in a) and a[1]["critic_param_distance"] == 0.0
    assert a[3]["critic_param_distance"] > 0  # the critic's head moved away from stage 1's
    co_critic = load_model(Path(full["final_dir"]) / "critic", sharding.make_mesh())
    start = load_model(final, sharding.make_mesh())
    assert co_critic.cfg.n_future_tokens == 1
    assert not np.array_equal(np.asarray(co_critic.value_head.kernel[...]), np.asarray(start.value_head.kernel[...]))
    np.testing.assert_array_equal(  # critic.train=head: its trunk stays as stage 1 left it
        np.asarray(co_critic.layers.attention.wq[...]), np.asarray(start.layers.attention.wq[...])
    )


def test_mlp_critic_head_trains_saves_and_feeds_stage_two(shared, tmp_path):
    """critic.head=mlp: stage 1 swaps in a d -> hidden -> 1 GELU head (zero output layer, so step 1 predicts 0),
    trains only it, records it in final/'s config; stage 2 restores the same head and anchors to it."""
    stage = {"train.num_steps": 3, "checkpoint.every_steps": 3}
    head = {"critic.head": "mlp", "critic.head_hidden": 16, "critic.head_dropout": 0.1}
    one = run("critic", shared, tmp_path / "mlp", **head, **stage)
    final = Path(one["final_dir"])
    recorded = json.loads((final / "model_config.json").read_text())["model"]
    assert recorded["value_head_hidden"] == 16 and recorded["value_head_dropout"] == 0.1
    m = read_metrics(tmp_path / "mlp")
    assert m[1]["value_mean"] == 0.0 and m[3]["value_mean"] != 0.0
    critic = load_model(final, sharding.make_mesh())
    assert critic.value_head.hidden.kernel.shape == (64, 16) and np.abs(critic.value_head.out.kernel[...]).sum() > 0
    from safetensors import safe_open

    from wmtp_jax.checkpoint import CheckpointError, ensure_orbax
    from wmtp_jax.checkpoint.export import export_checkpoint

    export_checkpoint(final, tmp_path / "meta", format="meta", progress=False)  # the MLP head is kept, not dropped
    with safe_open(tmp_path / "meta" / "value_head.safetensors", "pt") as f:
        assert set(f.keys()) == {f"value_head.{m}.{p}" for m in ("hidden", "out") for p in ("weight", "bias")}
    assert "value_head_hidden" not in json.loads((tmp_path / "meta" / "params.json").read_text())
    with pytest.raises(CheckpointError, match="an MLP value head"):
        ensure_orbax(tmp_path / "meta", tmp_path / "converted")
    init = {"model.init_from": str(final), "critic.value_clip": 0.2}
    run("verifiable", shared, tmp_path / "v", **init, **stage)
    v = read_metrics(tmp_path / "v")
    assert v[1]["value_mean"] != 0.0 and v[1]["critic_param_distance"] == 0.0 < v[3]["critic_param_distance"]


def test_mlp_head_dropout_acts_only_with_a_key_and_is_validated(shared, tmp_path):
    """critic.head_dropout: the MLP head's hidden layer is dropped when a dropout key is given (training), never
    without one; on a linear head, or co-training with LoRA, it is a config error."""
    import jax.numpy as jnp

    from wmtp_jax.model import ModelConfig, create_model
    from wmtp_jax.model.mtp import with_mlp_value_head

    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, vocab_size=64, multiple_of=16, n_future_tokens=1)
    mesh = sharding.make_mesh()
    model = with_mlp_value_head(create_model(cfg, mesh), 16, mesh, dropout=0.5)
    assert model.has_dropout() and model.cfg.value_head_dropout == 0.5
    out = model.value_head.out.kernel
    out[...] = jax.device_put(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape), out.sharding)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    plain = np.asarray(model.forward(tokens).values)
    np.testing.assert_array_equal(np.asarray(model.forward(tokens).values), plain)
    key = jax.random.key(0)
    dropped = np.asarray(model.forward(tokens, dropout_key=key).values)
    assert not np.allclose(dropped, plain)
    np.testing.assert_array_equal(np.asarray(model.forward(tokens, dropout_key=key).values), dropped)
    c = micro_config("critic", shared, tmp_path / "bad")
    c.critic.head_dropout = 0.1
    c.critic.co_train = True
    c.critic.train = "lora"
    c.model.lora.rank = 4
    text = "\n".join(jobs.problems(c, n_devices=4))
    assert "critic.head_dropout: dropout acts on the mlp head's hidden layer; set critic.head=mlp" in text
    assert "critic.co_train: a co-trained critic trains its head (train=head) or all of it (train=full)" in text
