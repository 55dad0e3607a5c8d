"""The ``forward`` job: restore a model into the mesh and show each head's greedy next token for some prompts."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wmtp_jax import sharding
from wmtp_jax.checkpoint import ensure_orbax, load_model
from wmtp_jax.checkpoint.micro import write_micro_models
from wmtp_jax.data.tokenizer import load_tokenizer
from wmtp_jax.model.config import model_options


def run(c) -> dict:
    """Returns ``{"logits_shape": ..., "predictions": [[head0, head1, ...] per prompt], "seconds": ...}``."""
    if c.model.build_micro:
        write_micro_models(c.model.checkpoint.rsplit("/", 1)[0])
    model_dir = ensure_orbax(c.model.checkpoint, c.model.cache_dir, vocab_size=c.model.vocab_size or None)
    mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    model = load_model(model_dir, mesh, **model_options(c.model))
    tok = load_tokenizer(c.tokenizer)

    prompts = list(c.forward.prompts)
    ids = [tok.encode(p, bos=True) for p in prompts]
    n_rows = -(-len(ids) // mesh.size) * mesh.size  # batch divisible by the mesh
    length = max(map(len, ids))
    tokens = np.full((n_rows, length), tok.pad_id, np.int32)
    segments = np.zeros((n_rows, length), np.int32)
    for i, row in enumerate(ids):
        tokens[i, : len(row)], segments[i, : len(row)] = row, 1
    batch = jax.device_put((tokens, segments), sharding.batch_sharding(mesh))

    graphdef, state = nnx.split(model)

    @jax.jit
    def last_logits(state, tokens, segments):
        logits = nnx.merge(graphdef, state)(tokens, segment_ids=segments)
        last = jnp.sum(segments > 0, axis=1) - 1
        return logits[jnp.arange(tokens.shape[0]), last]

    shape = (n_rows, length, model.cfg.n_future_tokens, model.cfg.vocab_size)
    start = time.perf_counter()
    out = last_logits(state, *batch)
    out = np.asarray(out)
    seconds = time.perf_counter() - start
    predictions = [[tok.decode([int(t)]) for t in out[i].argmax(-1)] for i in range(len(prompts))]
    print(
        f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"model {model_dir} ({model.cfg.n_layers} layers, {model.cfg.n_future_tokens} heads)"
    )
    print(f"logits {shape} (batch, seq, heads, vocab) in {seconds:.2f} s including compilation")
    for prompt, heads in zip(prompts, predictions):
        print(f"  {prompt!r} -> next tokens by head: {heads}")
    return {"logits_shape": shape, "predictions": predictions, "seconds": seconds}
