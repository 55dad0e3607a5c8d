"""Export to Meta / Hugging Face layouts: exact Meta round trip, transformers logits equal a head's logits, the
export usable as a Rho-1 reference, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.checkpoint import CheckpointError, convert_torch_checkpoint, load_model, micro, save_model
from wmtp_jax.checkpoint.convert import ensure_orbax
from wmtp_jax.checkpoint.export import export_checkpoint
from wmtp_jax.checkpoint.store import flatten, param_tree
from wmtp_jax.model import ModelConfig

CFG = ModelConfig(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=160, multiple_of=32, n_future_tokens=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted MTP model whose value head is not zero, so its export is checked too."""
    root = tmp_path_factory.mktemp("export")
    micro.write_meta_checkpoint(root / "meta", CFG, seed=5)
    convert_torch_checkpoint(root / "meta", root / "converted", progress=False)
    model = load_model(root / "converted", sharding.make_mesh())
    key = jax.random.key(0)
    model.value_head.kernel[...] = jax.random.normal(key, model.value_head.kernel.shape)
    model.value_head.bias[...] = jnp.array([0.25])
    save_model(model, root / "model")
    return root / "model"


def _params(path):
    model = load_model(path, sharding.make_mesh(devices=jax.devices()[:1]))
    return {k: np.asarray(v) for k, v in flatten(param_tree(nnx.state(model, nnx.Param))).items()}


def _tokens(shape=(2, 40), seed=0):
    return np.random.RandomState(seed).randint(0, CFG.vocab_size, shape)


@pytest.mark.parametrize("model_parallel", [1, 2])
def test_meta_round_trip_is_bit_exact(model_dir, tmp_path, model_parallel):
    export_checkpoint(model_dir, tmp_path / "meta", format="meta", model_parallel=model_parallel, progress=False)
    names = sorted(p.name for p in (tmp_path / "meta").iterdir())
    shards = [f"consolidated.{i:02d}.pth" for i in range(model_parallel)]
    assert names == sorted(["params.json", "value_head.safetensors", *shards])
    assert any(k.startswith("extra_heads.1.") for k in torch.load(tmp_path / "meta" / shards[0]))
    convert_torch_checkpoint(tmp_path / "meta", tmp_path / "back", progress=False)
    before, after = _params(model_dir), _params(tmp_path / "back")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert np.abs(after["value_head/kernel"]).sum() > 0


@pytest.mark.parametrize("head", [1, 3])
def test_hf_export_logits_equal_the_heads_logits(model_dir, tmp_path, head):
    from transformers import AutoTokenizer, LlamaForCausalLM

    export_checkpoint(model_dir, tmp_path / "hf", format="hf", head=head, max_shard_bytes=200_000, progress=False)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()  # several shards
    tokens = _tokens()
    ours = np.asarray(load_model(model_dir, sharding.make_mesh())(jnp.asarray(tokens, jnp.int32)))[:, :, head - 1]
    with torch.no_grad():
        hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
        ref = hf(torch.tensor(tokens)).logits.float().numpy()
    assert hf.config.num_hidden_layers == CFG.n_trunk_layers + 1
    np.testing.assert_allclose(ref, ours, atol=1e-4, rtol=0)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    from wmtp_jax.data.tokenizer import load_tokenizer

    text = "def add(x): return x + 7"  # single spaces: transformers and SentencePiece agree
    assert tok(text)["input_ids"] == load_tokenizer().encode(text, bos=True)


def test_exported_reference_loads_as_the_rho1_reference(model_dir, tmp_path):
    """The training loop restores ``reference.checkpoint`` with ``ensure_orbax`` + ``load_model``."""
    export_checkpoint(model_dir, tmp_path / "ref_hf", format="hf", progress=False)
    reference = load_model(ensure_orbax(tmp_path / "ref_hf", tmp_path / "cache"), sharding.make_mesh())
    assert reference.cfg.n_future_tokens == 1
    tokens = jnp.asarray(_tokens(), jnp.int32)
    head1 = np.asarray(load_model(model_dir, sharding.make_mesh())(tokens))[:, :, 0]
    np.testing.assert_allclose(np.asarray(reference(tokens))[:, :, 0], head1, atol=1e-4, rtol=0)


def test_bad_input_is_named(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint layout recognised"):
        export_checkpoint(tmp_path / "empty", tmp_path / "out", format="hf", progress=False)
    with pytest.raises(CheckpointError, match="not a model directory"):
        export_checkpoint(tmp_path / "missing", tmp_path / "out", format="hf", progress=False)
    with pytest.raises(CheckpointError, match="format='gguf'"):
        export_checkpoint(model_dir, tmp_path / "out", format="gguf", progress=False)
    with pytest.raises(CheckpointError, match="head=4: .* has 3 next-token heads"):
        export_checkpoint(model_dir, tmp_path / "out", format="hf", head=4, progress=False)
    with pytest.raises(CheckpointError, match="--model-parallel 3: .*not divisible by 3"):
        export_checkpoint(model_dir, tmp_path / "out", format="meta", model_parallel=3, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="tokenizer .*not found"):
        export_checkpoint(model_dir, tmp_path / "out", format="hf", tokenizer=tmp_path / "x.model", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    export_checkpoint(model_dir, tmp_path / "out", format="meta", progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        export_checkpoint(model_dir, tmp_path / "out", format="meta", progress=False)
