"""Generation: KV-cache decoding == naive recomputation, self-speculative == plain greedy, 1 == 4 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.checkpoint import load_model, micro, save_model
from wmtp_jax.data.tokenizer import Tokenizer
from wmtp_jax.eval.generate import GenerationConfig, Generator, sample
from wmtp_jax.model import create_model

PROMPTS = ["def add(a, b):", "Write a function to reverse a string.\n", "x = 1"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "model"
    save_model(create_model(micro.MICRO_MTP, sharding.make_mesh(), seed=1), path)
    return path


def _tokens(results):
    return [[c.tokens for c in row] for row in results]


def test_cached_greedy_equals_naive_recomputation(model_dir, tok):
    mesh = sharding.make_mesh()
    model = load_model(model_dir, mesh)
    results, stats = Generator(model, mesh, tok, batch_size=4).generate(PROMPTS, GenerationConfig(max_new_tokens=12))
    # the whole sequence through the training forward, one token at a time; right-padded to one length so that
    # a single compiled forward serves every step (causal attention: padding after a position cannot change it)
    length = max(len(tok.encode(p, bos=True)) for p in PROMPTS) + 12
    forward = nnx.jit(lambda m, x: m(x))
    for prompt, row in zip(PROMPTS, results):
        ids, naive = tok.encode(prompt, bos=True), []
        for _ in range(12):
            seq = ids + naive
            logits = forward(model, jnp.asarray([seq + [0] * (length - len(seq))], jnp.int32))
            naive.append(int(jnp.argmax(logits[0, len(seq) - 1, 0])))
        assert list(row[0].tokens) == naive and row[0].finish == "length"
    assert stats.completions == 3 and stats.tokens == 36


def test_self_speculative_greedy_equals_plain_greedy(model_dir, tok):
    mesh = sharding.make_mesh()
    model = load_model(model_dir, mesh)
    rates = {}
    for name in ("random", "copied_heads", "constant"):
        if name == "copied_heads":  # drafts sometimes right: partial acceptance
            for w in jax.tree.leaves(nnx.state(model.heads), is_leaf=lambda x: isinstance(x, nnx.Variable)):
                w[...] = jax.device_put(jnp.broadcast_to(w[...][:1], w.shape), w[...].sharding)  # every head := head 0
        if name == "constant":  # zero final norm: every head always predicts token 0, every draft is right
            model.norm.weight[...] = jnp.zeros_like(model.norm.weight[...])
        gen = Generator(model, mesh, tok, batch_size=4)
        plain, _ = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=24))
        spec, stats = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=24, speculative=True))
        assert _tokens(spec) == _tokens(plain), name
        assert stats.drafts_proposed == stats.forwards * (model.cfg.n_future_tokens - 1)
        rates[name] = stats.acceptance_rate
    assert rates["random"] < 0.2 and 0 < rates["copied_heads"] < 1 and rates["constant"] == 1.0


def test_one_and_four_devices_give_the_same_completions(model_dir, tok):
    config = GenerationConfig(max_new_tokens=10)
    out = {}
    for n in (1, 4):
        mesh = sharding.make_mesh(devices=jax.devices()[:n])
        out[n] = _tokens(Generator(load_model(model_dir, mesh), mesh, tok, batch_size=4).generate(PROMPTS, config)[0])
    assert out[1] == out[4]


def test_stop_strings_samples_and_batches(model_dir, tok):
    mesh = sharding.make_mesh()
    gen = Generator(load_model(model_dir, mesh), mesh, tok, batch_size=4)
    (row,), _ = gen.generate(["x = 1"], GenerationConfig(max_new_tokens=12))
    text = row[0].text
    stop = text[3:6]  # a string the greedy completion contains: it must end there
    (row,), _ = gen.generate(["x = 1"], GenerationConfig(max_new_tokens=12, stop=(stop,), chunk_steps=2))
    assert row[0].finish == "stop" and row[0].text == text[: text.find(stop)]
    config = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9)
    results, stats = gen.generate(PROMPTS, config, n_samples=3, seed=1)  # 9 rows: batches of 4, 4, 1
    assert [len(r) for r in results] == [3, 3, 3] and stats.completions == 9
    assert len({c.tokens for r in results for c in r}) > 3  # samples differ
    again, _ = gen.generate(PROMPTS, config, n_samples=3, seed=1)
    assert _tokens(again) == _tokens(results)  # same seed, same samples
    with pytest.raises(ValueError, match="greedy only"):
        GenerationConfig(temperature=0.5, speculative=True)
    with pytest.raises(ValueError, match="multiple of the 4"):
        Generator(load_model(model_dir, mesh), mesh, tok, batch_size=2)


def test_nucleus_sampling_keeps_the_top_mass():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = jax.vmap(lambda k: sample(logits, k, 1.0, 0.7))(jax.random.split(jax.random.key(0), 2000))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4)
    assert counts[2] == counts[3] == 0  # 0.5 + 0.3 >= 0.7: only the top two remain
    assert 0.55 < counts[0] / counts.sum() < 0.70  # renormalised 0.5 / 0.8 = 0.625
    assert int(sample(logits, jax.random.key(0), 0.0, 1.0)[0]) == 0
