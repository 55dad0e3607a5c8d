"""LoRA adapters (nnx.LoRA on the projection modules): B = 0 keeps the base's logits, only adapters (and the value
head) train, merged final/ equals base + adapters, sharded == unsharded, exact resume."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_train import micro_config, read_metrics, run

from wmtp_jax import jobs, sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.checkpoint.export import export_checkpoint
from wmtp_jax.checkpoint.policy import load_policy
from wmtp_jax.model import ModelConfig, create_model
from wmtp_jax.model.lora import LoraConfig, apply_lora, has_lora, merge_lora, trainable_filter
from wmtp_jax.train.objectives import Baseline, Verifiable
from wmtp_jax.train.step import OptimizerConfig, StepConfig
from wmtp_jax.train.trainer import Trainer

CFG = ModelConfig(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=160, multiple_of=32, n_future_tokens=3)
LORA = LoraConfig(rank=4, alpha=8.0)


def _tokens(shape=(4, 16), seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, shape), jnp.int32)


def _batch(seed=0, rows=4, length=16):
    tokens = np.random.RandomState(seed).randint(3, CFG.vocab_size, (rows, length)).astype(np.int32)
    loss_mask = np.ones_like(tokens)
    loss_mask[:, :4] = 0
    return {
        "tokens": tokens,
        "loss_mask": loss_mask,
        "rewards": np.full((rows, length), 0.5, np.float32),
        "segment_ids": np.ones_like(tokens),
        "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
    }


def test_zero_b_keeps_the_base_logits_and_merge_equals_adapters():
    mesh = sharding.make_mesh()
    model = create_model(CFG.replace(scan_layers=False), mesh)  # unrolled here; scanned in the training tests
    base = np.asarray(model(_tokens()))
    apply_lora(model, LORA, mesh)
    np.testing.assert_array_equal(np.asarray(model(_tokens())), base)  # B = 0: exactly the base
    for m in (model.layers.attention.wq, model.heads.feed_forward.w2):
        m.lora.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(1), m.lora.lora_b.shape)
    adapted = np.asarray(model(_tokens()))
    assert np.abs(adapted - base).max() > 1e-3
    merged = np.asarray(merge_lora(model)(_tokens()))
    assert not has_lora(model)
    np.testing.assert_allclose(merged, adapted, atol=2e-5, rtol=0)  # float32: only the summation order differs


def test_targets_must_select_block_projections():
    model = create_model(CFG, sharding.make_mesh())
    with pytest.raises(ValueError, match="'output' selects \\['output'\\]"):
        apply_lora(model, LoraConfig(rank=2, targets=("output",)), None)
    with pytest.raises(ValueError, match="selects no projection"):
        apply_lora(model, LoraConfig(rank=2, targets=("attention/wz",)), None)
    assert LoraConfig(rank=-1, base_dtype="nf3").problems("model.lora") == [
        "model.lora.rank=-1: expected a non-negative integer",
        "model.lora.base_dtype='nf3': expected one of ['', 'float32', 'bfloat16', 'nf4', 'int8']",
    ]


@pytest.mark.parametrize("objective", [Baseline(), Verifiable()], ids=["baseline", "verifiable"])
def test_only_adapters_and_value_head_train(objective):
    mesh = sharding.make_mesh()
    model = create_model(CFG, mesh)
    apply_lora(model, LORA, mesh)
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    trainer = Trainer(objective, model, mesh=mesh, step_config=StepConfig(), seed=0)
    trained = set(dict(nnx.to_flat_state(trainer.initial_state().params)))
    expected = set(dict(nnx.to_flat_state(nnx.state(model, trainable_filter(objective.trainable())))))
    assert trained == expected and all("lora" in k or "value_head" in k for k in trained)
    state = trainer.initial_state()
    for s in range(3):
        state, _ = trainer.step(state, _batch(s))
    after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(trainer.model(state), nnx.Param))}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and changed <= trained
    assert any("lora_b" in "/".join(map(str, k)) for k in changed)
    assert (any("value_head" in k for k in changed)) == objective.trains_value


def test_sharded_equals_unsharded():
    def losses(mesh):
        model = create_model(CFG, mesh)
        apply_lora(model, LORA, mesh)
        trainer = Trainer(Baseline(), model, mesh=mesh, step_config=StepConfig(), seed=0)
        state, out = trainer.initial_state(), []
        for s in range(3):
            state, metrics = trainer.step(state, _batch(s))
            out.append(float(metrics["loss"]))
        return out

    with jax.default_matmul_precision("highest"):
        one = losses(sharding.make_mesh(devices=jax.devices()[:1]))
        four = losses(sharding.make_mesh())
    np.testing.assert_allclose(four, one, rtol=1e-5)


def test_lora_config_is_validated(shared, tmp_path):
    c = micro_config("baseline", shared, tmp_path / "w")
    c.model.lora.rank = -2
    with pytest.raises(ValueError, match="model.lora.rank=-2"):
        jobs.validate(c)


def test_bfloat16_base_stores_the_frozen_weights_in_bfloat16():
    mesh = sharding.make_mesh()
    model = create_model(CFG.replace(dtype="bfloat16"), mesh)
    base = np.asarray(model(_tokens()))
    apply_lora(model, LoraConfig(rank=4, base_dtype="bfloat16"), mesh)
    assert model.layers.attention.wq.kernel[...].dtype == jnp.bfloat16 == model.tok_embeddings[...].dtype
    assert model.layers.attention.wq.lora.lora_a[...].dtype == jnp.float32 == model.value_head.kernel[...].dtype
    np.testing.assert_array_equal(np.asarray(model(_tokens())), base)  # bf16 compute: casting first changes nothing


@pytest.mark.parametrize("base_dtype,tolerance", [("nf4", 0.15), ("int8", 0.02)])
def test_qlora_base_is_quantized_trains_adapters_and_merges(base_dtype, tolerance):
    """QLoRA: the seven block projections are stored as nf4 / int8 codes with absmax scales (qwix), the rest in
    bfloat16; logits stay near the bf16 base (max |diff| < ``tolerance`` on logits of magnitude ~0.7, the
    quantisation error), and the merged model equals base + adapters within bf16 rounding (2e-2). nf4: three
    steps on the 4-device mesh train only the adapters. (Sharded == unsharded: ``test_sharded_equals_unsharded``
    for the adapters; the quantised kernels keep the kernel's shardings.)"""

    def build(mesh):
        model = create_model(CFG.replace(dtype="bfloat16"), mesh)
        base = np.asarray(model(_tokens()))
        apply_lora(model, LoraConfig(rank=4, alpha=8.0, base_dtype=base_dtype), mesh)
        return model, base

    def train(model, mesh):
        trainer = Trainer(Baseline(), model, mesh=mesh, step_config=StepConfig(), seed=0)
        state, out = trainer.initial_state(), []
        for s in range(3):
            state, metrics = trainer.step(state, _batch(s))
            out.append(float(metrics["loss"]))
        return trainer, state, out

    mesh = sharding.make_mesh()
    model, base = build(mesh)
    wq = model.layers.attention.wq
    codes = {"nf4": jnp.uint4, "int8": jnp.int8}[base_dtype]
    assert wq.kernel[...].dtype == codes and wq.kernel[...].shape == (CFG.n_trunk_layers, 64, 64)
    assert wq.kernel_scale[...].shape == (CFG.n_trunk_layers, 1, 64)  # one scale per 64 input rows and column
    assert model.tok_embeddings[...].dtype == jnp.bfloat16
    quantized = np.asarray(model(_tokens()))
    assert 0 < np.abs(quantized - base).max() < tolerance
    if base_dtype == "int8":  # the same code path as nf4 from here on: dequantised merge only
        np.testing.assert_allclose(np.asarray(merge_lora(model)(_tokens())), quantized, atol=2e-2, rtol=0)
        return
    trainer, state, four = train(model, mesh)
    assert all(("lora" in "/".join(map(str, k))) for k, _ in nnx.to_flat_state(state.params))
    adapted = trainer.model(state)
    logits = np.asarray(adapted(_tokens()))
    merged = merge_lora(adapted)
    assert merged.layers.attention.wq.kernel[...].dtype == jnp.float32 and not has_lora(merged)
    np.testing.assert_allclose(np.asarray(merged(_tokens())), logits, atol=2e-2, rtol=0)
    assert all(np.isfinite(four)) and four[2] != four[0]


def test_lora_dropout_acts_only_in_training():
    """model.lora.dropout masks the adapters' input in the train step (different updates of B from dropout 0) and
    never acts at evaluation (no dropout key). (Reproducible per seed: the QLoRA run below resumes bit for bit.)"""

    def trained(rate, seed=0):
        mesh = sharding.make_mesh()
        model = create_model(CFG, mesh)
        apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=rate), mesh)
        assert model.has_dropout() == (rate > 0)
        optimizer = OptimizerConfig(learning_rate=1e-2)  # step 1 has learning rate 0 (warmup from 0)
        trainer = Trainer(Baseline(), model, mesh=mesh, step_config=StepConfig(), optimizer=optimizer, seed=seed)
        state, losses = trainer.initial_state(), []
        for s in range(3):
            state, metrics = trainer.step(state, _batch(s))
            losses.append(float(metrics["loss"]))
        return trainer.model(state), losses

    plain, plain_losses = trained(0.0)
    dropped, dropped_losses = trained(0.5)
    assert dropped_losses[:2] == plain_losses[:2]  # B = 0 until the first update (step 1's learning rate is 0)
    assert dropped_losses[2] != plain_losses[2]
    b = lambda m: np.asarray(m.layers.attention.wq.lora.lora_b[...])
    assert not np.array_equal(b(plain), b(dropped))
    np.testing.assert_array_equal(np.asarray(dropped(_tokens())), np.asarray(dropped(_tokens())))  # no key: none


def test_qlora_rho1_run_resumes_exactly_and_writes_adapters_or_a_merged_final(shared, tmp_path):
    """A Rho-1 run with a QLoRA policy (nf4 base, adapter dropout) and an nf4 reference. Cut after its step-2
    checkpoint and resumed, it gives bit-identical losses; checkpoints hold only the adapters. Its final/ with
    ``export.merge_lora=False`` holds only the adapters and value head plus its base's path: the policy restored
    from it equals the one restored from the workdir, and the streamed exports of both are identical. The
    resumed run's merged final/ gives the same logits (float32, atol 1e-4), and so does transformers on the HF
    export."""
    import orbax.checkpoint.experimental.v1 as ocp
    from safetensors.numpy import load_file
    from transformers import LlamaForCausalLM

    from wmtp_jax.checkpoint.store import flatten

    qlora = {
        "model.lora.rank": 4,
        "model.lora.alpha": 8.0,
        "model.lora.dropout": 0.1,
        "model.lora.base_dtype": "nf4",
        "reference.dtype": "nf4",
        "train.learning_rate": 1e-2,
        "train.num_steps": 4,
        "checkpoint.every_steps": 2,
        "checkpoint.async_save": False,
    }
    full = run("rho1", shared, tmp_path / "full", **qlora, **{"export.merge_lora": False})
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for later in ("checkpoints/4", "final"):
        shutil.rmtree(tmp_path / "cut" / later)
    cut = run("rho1", shared, tmp_path / "cut", **qlora)  # resumed; final/ merged (the default)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [a[s]["loss"] for s in (3, 4)] == [b[s]["loss"] for s in (3, 4)]  # bit-identical after resume
    stored = json.loads((tmp_path / "full" / "checkpoints" / "2" / "state" / "_METADATA").read_text())
    params = {k for k in stored["tree_metadata"] if k.startswith("('params'")}
    assert params and all("'lora', 'lora_" in k for k in params)  # adapters only: the frozen base is not saved

    adapters, merged_dir = Path(full["final_dir"]), Path(cut["final_dir"])
    assert (adapters / "adapter_config.json").is_file() and not (adapters / "model_config.json").exists()
    assert json.loads((adapters / "selection.json").read_text())["lora"] == "adapters"
    assert json.loads((merged_dir / "selection.json").read_text())["lora"] == "merged"
    stored = flatten(ocp.metadata(adapters / "params").metadata)
    assert stored and all("/lora/lora_" in k or k.startswith("value_head/") for k in stored)
    mesh = sharding.make_mesh()
    from_final, description = load_policy(adapters, mesh)
    from_workdir, _ = load_policy(tmp_path / "full", mesh, cache_dir=shared["model.cache_dir"])
    merged = load_model(merged_dir, mesh)
    assert description.startswith("LoRA adapters") and from_final.layers.attention.wq.quantized
    assert not has_lora(merged)
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, 32000, (2, 12)), jnp.int32)
    logits = np.asarray(from_final(tokens))
    np.testing.assert_array_equal(logits, np.asarray(from_workdir(tokens)))
    np.testing.assert_allclose(np.asarray(merged(tokens)), logits, atol=1e-4, rtol=0)  # merged == base + adapters
    start = load_model(next(Path(shared["model.cache_dir"]).glob("mtp_meta-*")), mesh)
    assert not np.array_equal(np.asarray(merged.layers.attention.wq[...]), np.asarray(start.layers.attention.wq[...]))

    for src, dst in ((adapters, "hf_final"), (tmp_path / "full", "hf_workdir")):
        export_checkpoint(src, tmp_path / dst, format="hf", cache_dir=shared["model.cache_dir"], progress=False)
    a = load_file(tmp_path / "hf_final" / "model.safetensors")
    b = load_file(tmp_path / "hf_workdir" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf_final").eval()
        ref = hf(torch.tensor(np.asarray(tokens))).logits.float().numpy()
    np.testing.assert_allclose(ref, logits[:, :, 0], atol=1e-4, rtol=0)


def test_full_fine_tuning_workdir_exports_like_its_final(shared, tmp_path):
    """A training workdir is exported streamed (its trained stacked leaves spilled block by block) and gives the
    same Meta tensors as the run's final/."""
    out = run("baseline", shared, tmp_path / "b", **{"train.num_steps": 1, "checkpoint.every_steps": 1})
    for src, dst in ((out["final_dir"], "final"), (tmp_path / "b", "workdir")):
        export_checkpoint(src, tmp_path / dst, format="meta", cache_dir=shared["model.cache_dir"], progress=False)
    a = torch.load(tmp_path / "final" / "consolidated.00.pth")
    b = torch.load(tmp_path / "workdir" / "consolidated.00.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
