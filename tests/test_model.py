"""MTP transformer: parity with torch references, sharded == unsharded, padding, config validation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from torch_reference import meta_mtp_logits
from wmtp_jax import sharding
from wmtp_jax.checkpoint import convert_torch_checkpoint, load_model, micro
from wmtp_jax.model import ModelConfig, ModelConfigError, MTPTransformer, create_model

GQA_MTP = ModelConfig(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=160, multiple_of=32, n_future_tokens=3)
GQA_HF = dict(
    micro.MICRO_REFERENCE_HF, num_attention_heads=8, num_key_value_heads=2, vocab_size=300, intermediate_size=96
)


def _tokens(vocab, shape=(2, 24), seed=0):
    return np.random.RandomState(seed).randint(0, vocab, shape)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_checkpoint_logits_match_torch_reference(tmp_path, n_shards):
    micro.write_meta_checkpoint(tmp_path / "meta", GQA_MTP, seed=3, n_shards=n_shards)
    convert_torch_checkpoint(tmp_path / "meta", tmp_path / "orbax", progress=False)
    model = load_model(tmp_path / "orbax", sharding.make_mesh())
    tokens = _tokens(GQA_MTP.vocab_size)
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
    ref = meta_mtp_logits(micro.meta_state_dict(GQA_MTP, seed=3), GQA_MTP.to_params_json(), torch.tensor(tokens))
    assert ours.shape == (2, 24, 3, GQA_MTP.vocab_size)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pytorch_bin"])
def test_hf_llama_logits_match_transformers(tmp_path, safe_serialization):
    from transformers import LlamaForCausalLM

    micro.write_hf_checkpoint(tmp_path / "hf", GQA_HF, seed=1, safe_serialization=safe_serialization)
    convert_torch_checkpoint(tmp_path / "hf", tmp_path / "orbax", progress=False)
    model = load_model(tmp_path / "orbax", sharding.make_mesh())
    assert model.cfg.n_future_tokens == 1 and model.cfg.kv_heads == 2
    tokens = _tokens(GQA_HF["vocab_size"], (2, 48))  # > 20 tokens: a wrong RoPE permutation shows here
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))[:, :, 0]
    with torch.no_grad():
        ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(torch.tensor(tokens)).logits.float()
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=0)


def test_hf_vocab_slicing(tmp_path):
    """CodeLlama-7b-hf has 32016 rows; the first 32000 are the LLaMA vocabulary."""
    from transformers import LlamaForCausalLM

    micro.write_hf_checkpoint(tmp_path / "hf", dict(GQA_HF, vocab_size=316), seed=2)
    cfg = convert_torch_checkpoint(tmp_path / "hf", tmp_path / "orbax", vocab_size=300, progress=False)
    assert cfg.vocab_size == 300
    model = load_model(tmp_path / "orbax", sharding.make_mesh())
    tokens = _tokens(300)
    ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))[:, :, 0]
    with torch.no_grad():
        ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf")(torch.tensor(tokens)).logits[..., :300]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=0)


def _random_model(cfg, seed=0):
    return MTPTransformer(cfg, rngs=nnx.Rngs(seed))


def test_sharded_forward_equals_unsharded():
    cfg = GQA_MTP
    model = _random_model(cfg)
    graphdef, state = nnx.split(model)
    tokens = jnp.asarray(_tokens(cfg.vocab_size, (4, 16)), jnp.int32)
    single = np.asarray(model(tokens))
    for mesh in (sharding.make_mesh(fsdp=4), sharding.make_mesh(fsdp=2, tensor=2), sharding.make_mesh(data=2, fsdp=2)):
        shardings = sharding.state_shardings(state, mesh)
        sharded_state = jax.device_put(state, shardings)
        assert any(len(s.spec) and any(a is not None for a in s.spec) for s in jax.tree.leaves(shardings))
        tok = jax.device_put(tokens, sharding.batch_sharding(mesh))

        @jax.jit
        def fwd(st, t):
            return nnx.merge(graphdef, st)(t)

        out = fwd(sharded_state, tok)
        np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=0)


def test_forward_outputs_shapes_and_value_head_starts_at_zero():
    cfg = GQA_MTP
    model = _random_model(cfg)
    out = model.forward(jnp.zeros((2, 8), jnp.int32))
    assert out.head_hidden.shape == (2, 8, cfg.n_future_tokens, cfg.dim)
    assert out.values.shape == (2, 8) and out.values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out.values), 0.0)
    logits = model.logits(out.head_hidden)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 8, cfg.n_future_tokens, cfg.vocab_size)


def test_padding_and_packing_masks_isolate_sequences():
    cfg = GQA_MTP
    model = _random_model(cfg, seed=1)
    a, b = _tokens(cfg.vocab_size, (1, 10), 1), _tokens(cfg.vocab_size, (1, 6), 2)
    alone_a, alone_b = np.asarray(model(jnp.asarray(a))), np.asarray(model(jnp.asarray(b)))
    # right padding: row = b + 4 pad tokens
    padded = np.concatenate([b, np.full((1, 4), 7)], axis=1)
    seg = np.array([[1] * 6 + [0] * 4])
    out = np.asarray(model(jnp.asarray(padded), segment_ids=jnp.asarray(seg)))
    np.testing.assert_allclose(out[:, :6], alone_b, atol=1e-5)
    # packing: a then b in one row, positions restart at b
    packed = np.concatenate([a, b], axis=1)
    seg = np.array([[1] * 10 + [2] * 6])
    pos = np.array([list(range(10)) + list(range(6))])
    out = np.asarray(model(jnp.asarray(packed), positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
    np.testing.assert_allclose(out[:, :10], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 10:], alone_b, atol=1e-5)


def test_bf16_compute_and_remat_stay_close_to_float32():
    cfg = GQA_MTP
    tokens = jnp.asarray(_tokens(cfg.vocab_size), jnp.int32)
    ref = np.asarray(_random_model(cfg)(tokens))
    remat = np.asarray(_random_model(cfg.replace(remat="full"))(tokens))
    np.testing.assert_allclose(remat, ref, atol=1e-6)
    bf16 = _random_model(cfg.replace(dtype="bfloat16"))
    assert bf16.layers.attention.wq[...].dtype == jnp.float32  # master weights stay float32
    out = np.asarray(bf16(tokens))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=5e-2)


@pytest.mark.parametrize(
    "layout",
    [
        dict(scan_layers=True),
        dict(attention="chunked", attention_chunk=8),
        dict(scan_layers=True, attention="chunked", attention_chunk=8, remat="full"),
    ],
    ids=["scan", "chunked", "scan_chunked_remat"],
)
def test_memory_layouts_equal_the_plain_model(layout):
    """lax.scan over the trunk and query-chunked attention give the plain model's logits and gradients."""
    cfg = GQA_MTP
    tokens = jnp.asarray(_tokens(cfg.vocab_size, (2, 32)), jnp.int32)
    segments = jnp.asarray(np.array([[1] * 32, [1] * 20 + [2] * 8 + [0] * 4]), jnp.int32)

    def loss_and_grads(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(tokens, segment_ids=segments)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
        return logits, grads

    plain, changed = _random_model(cfg, seed=4), _random_model(cfg.replace(**layout), seed=4)
    np.testing.assert_allclose(np.asarray(changed(tokens)), np.asarray(plain(tokens)), atol=1e-5)  # causal only
    ref_logits, ref_grads = loss_and_grads(plain)
    logits, grads = loss_and_grads(changed)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_ffn_hidden_dim_follows_meta_rule():
    assert ModelConfig(dim=4096, multiple_of=256).hidden_dim == 11008  # 7B
    assert ModelConfig(dim=4096, multiple_of=256, ffn_dim_multiplier=1.3, n_kv_heads=8).hidden_dim == 14336
    assert ModelConfig(dim=4096, n_layers=32, n_future_tokens=4).n_trunk_layers == 28


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(dim=100, n_heads=32), "dim=100"),
        (dict(n_future_tokens=0), "n_future_tokens=0"),
        (dict(n_layers=3, n_future_tokens=4), "n_layers=3"),
        (dict(n_kv_heads=5), "n_kv_heads=5"),
        (dict(norm_eps=0.0), "norm_eps=0.0"),
        (dict(dtype="fp8"), "dtype='fp8'"),
        (dict(remat="sometimes"), "remat='sometimes'"),
    ],
)
def test_invalid_model_config_names_the_field(changes, field):
    with pytest.raises(ModelConfigError, match=field.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**changes)


def test_config_from_params_json_and_hf_config(tmp_path):
    (tmp_path / "params.json").write_text(
        json.dumps(
            {
                "dim": 4096,
                "n_layers": 32,
                "n_heads": 32,
                "vocab_size": 32000,
                "multiple_of": 256,
                "norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "n_future_tokens": 4,
                "max_batch_size": 32,
            }
        )
    )
    cfg = ModelConfig.from_params_json(tmp_path / "params.json")
    assert (cfg.n_trunk_layers, cfg.hidden_dim, cfg.kv_heads) == (28, 11008, 32)
    hf = ModelConfig.from_hf_config(
        {
            "model_type": "llama",
            "hidden_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "num_key_value_heads": 20,
            "intermediate_size": 6912,
            "vocab_size": 32000,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096,
        }
    )
    assert (hf.dim, hf.hidden_dim, hf.n_future_tokens, hf.max_seq_len) == (2560, 6912, 1, 4096)
    (tmp_path / "bad.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "wat": 1}))
    with pytest.raises(ModelConfigError, match=r"unknown model config key\(s\) \['wat'\]"):
        ModelConfig.from_params_json(tmp_path / "bad.json")
    with pytest.raises(ModelConfigError, match="rope_scaling"):
        ModelConfig.from_hf_config({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}})


def test_create_model_initialises_directly_into_shardings():
    mesh = sharding.make_mesh(fsdp=2, tensor=2)
    model = create_model(GQA_MTP, mesh, seed=0)
    w1 = model.layers.feed_forward.w1[...]  # [n_trunk_layers, dim, hidden]: the layer axis is never split
    assert w1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert w1.addressable_shards[0].data.shape == (GQA_MTP.n_trunk_layers, GQA_MTP.dim // 2, GQA_MTP.hidden_dim // 2)
    np.testing.assert_allclose(
        np.asarray(w1), np.asarray(_random_model(GQA_MTP).layers.feed_forward.w1[...]), atol=1e-7
    )
