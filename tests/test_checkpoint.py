"""Conversion and restore: device counts, dtypes, and every error a user can hit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.checkpoint import CheckpointError, convert_torch_checkpoint, load_model, micro, save_model
from wmtp_jax.model import ModelConfig

CFG = ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, n_future_tokens=2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    micro.write_meta_checkpoint(root / "meta", CFG, seed=5, n_shards=2, dtype=torch.bfloat16)
    convert_torch_checkpoint(root / "meta", root / "orbax", progress=False)
    return root


def test_restore_onto_1_2_and_4_devices_gives_same_logits(converted):
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (4, 12)), jnp.int32)
    outs = []
    for n in (1, 2, 4):
        mesh = sharding.make_mesh(devices=jax.devices()[:n])
        model = load_model(converted / "orbax", mesh)
        wq = model.layers.attention.wq[...]
        assert wq.sharding.mesh.size == n and wq.dtype == jnp.float32  # bf16 on disk, float32 master weights
        if n > 1:
            assert wq.sharding.spec[:2] == (None, "fsdp") and len(wq.addressable_shards) == n
        outs.append(np.asarray(model(tokens)))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)


def test_save_model_roundtrip(converted, tmp_path):
    model = load_model(converted / "orbax", sharding.make_mesh(fsdp=2, tensor=2))
    save_model(model, tmp_path / "export")
    again = load_model(tmp_path / "export", sharding.make_mesh(devices=jax.devices()[:1]))
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(model)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_storage_dtype_option(tmp_path, converted):
    convert_torch_checkpoint(converted / "meta", tmp_path / "o", dtype="float32", progress=False)
    model = load_model(tmp_path / "o", sharding.make_mesh(), param_dtype="bfloat16")
    assert model.output[...].dtype == jnp.bfloat16


# ----------------------------------------------------------------------------------- errors
def _meta(tmp_path, mutate=None):
    src = tmp_path / "src"
    micro.write_meta_checkpoint(src, CFG, seed=0)
    if mutate:
        sd = torch.load(src / "consolidated.pth")
        mutate(sd)
        torch.save(sd, src / "consolidated.pth")
    return src


def test_missing_weight_is_named(tmp_path):
    src = _meta(tmp_path, lambda sd: sd.pop("layers.1.feed_forward.w2.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing weight layers\.1\.feed_forward\.w2\.weight \(expected torch shape \(64, 192\)"
    ):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)
    assert not (tmp_path / "dst").exists()  # nothing half-written


def test_unexpected_weight_is_named(tmp_path):
    src = _meta(tmp_path, lambda sd: sd.__setitem__("lora_A.weight", torch.zeros(3, 4)))
    with pytest.raises(CheckpointError, match=r"unexpected weight lora_A\.weight \(shape \(3, 4\)\)"):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)


def test_misshaped_weight_names_both_shapes(tmp_path):
    src = _meta(tmp_path, lambda sd: sd.__setitem__("layers.0.attention.wk.weight", torch.zeros(64, 64)))
    with pytest.raises(
        CheckpointError,
        match=r"weight layers\.0\.attention\.wk\.weight: checkpoint gives shape "
        r"\(64, 64\) for layers/0/attention/wk, model expects \(64, 32\)",
    ):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)


def test_file_that_is_not_a_checkpoint(tmp_path):
    src = _meta(tmp_path)
    (src / "consolidated.pth").write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=r"consolidated\.pth: not a torch checkpoint.*expected a state dict"):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)
    torch.save([1, 2, 3], src / "consolidated.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.pth: expected a state dict .* found list"):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)


def test_unknown_layout_and_existing_destination(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("x")
    with pytest.raises(CheckpointError, match=r"no checkpoint layout recognised \(found \['README'\]\)"):
        convert_torch_checkpoint(tmp_path / "empty", tmp_path / "dst", progress=False)
    with pytest.raises(CheckpointError, match="not a directory"):
        convert_torch_checkpoint(tmp_path / "nope", tmp_path / "dst", progress=False)
    src = _meta(tmp_path)
    (tmp_path / "dst").mkdir()
    with pytest.raises(CheckpointError, match="already exists; pass overwrite=True"):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)


def test_params_json_disagreeing_with_extra_heads(tmp_path):
    src = _meta(tmp_path)
    params = json.loads((src / "params.json").read_text())
    (src / "params.json").write_text(json.dumps(dict(params, n_future_tokens=3, n_layers=5)))
    with pytest.raises(CheckpointError, match="n_future_tokens=3 but the checkpoint has 1 extra_heads"):
        convert_torch_checkpoint(src, tmp_path / "dst", progress=False)


def test_load_model_errors(tmp_path, converted):
    with pytest.raises(CheckpointError, match="no model_config.json"):
        load_model(tmp_path, sharding.make_mesh())
    # a config that no longer matches the stored weights: every mis-shaped weight is named with both shapes
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params").symlink_to(converted / "orbax" / "params")
    cfg = json.loads((converted / "orbax" / "model_config.json").read_text())
    cfg["model"]["vocab_size"] = 100
    (bad / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"weight output: checkpoint shape \(64, 128\), model expects \(64, 100\)"
    ):
        load_model(bad, sharding.make_mesh())
    cfg["model"]["vocab_size"], cfg["model"]["n_layers"] = 128, 5
    (bad / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing weight layers/2/attention/wk"):
        load_model(bad, sharding.make_mesh())
    (bad / "params").unlink()
    (bad / "params").mkdir()
    with pytest.raises(CheckpointError, match="not an Orbax parameter checkpoint"):
        load_model(bad, sharding.make_mesh())


def test_cached_conversion_is_keyed_by_options_and_redone_when_the_source_changes(tmp_path, capsys):
    from wmtp_jax.checkpoint.convert import ensure_orbax

    micro.write_meta_checkpoint(tmp_path / "meta", CFG, seed=0)
    first = ensure_orbax(tmp_path / "meta", tmp_path / "cache")
    assert ensure_orbax(tmp_path / "meta", tmp_path / "cache") == first  # reused
    sliced = ensure_orbax(tmp_path / "meta", tmp_path / "cache", vocab_size=CFG.vocab_size - 10)
    assert sliced != first and load_model(sliced).cfg.vocab_size == CFG.vocab_size - 10
    micro.write_meta_checkpoint(tmp_path / "meta", CFG, seed=1)  # new weights, same path
    assert ensure_orbax(tmp_path / "meta", tmp_path / "cache") == first
    assert "changed since it was converted" in capsys.readouterr().err
    fresh = load_model(first).tok_embeddings[...]
    expected = micro.meta_state_dict(CFG, seed=1)["tok_embeddings.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(fresh), expected)
