"""How the legacy fixture beside this file was made (run once, on commit b48bd6d, the last one before the
trainer redesign; kept as the record of what the old code wrote, not meant to run on later code).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 uv run python tests/data/legacy/make_fixture.py

Writes, with a tiny MTP model (vocab 32000 so the shipped tokenizer fits, dim 8, 1 trunk block + 2 heads):
  model/        an Orbax model directory as ``convert_torch_checkpoint`` wrote it
  workdir/      a baseline training workdir after 2 steps (train-state checkpoint + Grain iterator state)
  expected.json the logits of ``model/`` on fixed tokens, and the losses of an uninterrupted 3-step run
model/ and workdir/ were then packed (``tar -czf legacy_checkpoints.tar.gz model workdir``) and removed, so the
repository holds one archive instead of Orbax's generated files.
"""

import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
jax.config.update("jax_default_matmul_precision", "highest")

from wmtp_jax import sharding  # noqa: E402
from wmtp_jax.checkpoint import convert_torch_checkpoint, load_model  # noqa: E402
from wmtp_jax.checkpoint.micro import write_meta_checkpoint  # noqa: E402
from wmtp_jax.model import ModelConfig  # noqa: E402
from wmtp_jax.train import loop  # noqa: E402

TINY = ModelConfig(dim=8, n_layers=3, n_heads=2, n_kv_heads=1, vocab_size=32000, multiple_of=8, n_future_tokens=2,
                   max_seq_len=512)
TOKENS = np.arange(1, 25, dtype=np.int32).reshape(2, 12) * 7


def config(workdir, data_dir, model_dir, steps):
    c = importlib.import_module("configs.baseline").get_config("micro")
    c.model.checkpoint = str(model_dir)
    c.model.build_micro = False
    c.model.param_dtype = "bfloat16"  # keeps the fixture small
    c.data.cache_dir = str(data_dir)
    c.workdir = str(workdir)
    c.train.num_steps = steps
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 1
    c.checkpoint.async_save = False
    c.train.eval_batches = 1
    return c


def main():
    for name in ("model", "workdir"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_meta_checkpoint(tmp / "torch", TINY, seed=3)
        convert_torch_checkpoint(tmp / "torch", HERE / "model")
        model = load_model(HERE / "model", sharding.make_mesh())
        logits = np.asarray(model(TOKENS))
        loop.train(config(HERE / "workdir", tmp / "data", HERE / "model", 2))
        full = loop.train(config(tmp / "full", tmp / "data", HERE / "model", 3))
    for stray in ("mlflow.db", "mlartifacts", "mlflow_run.json", "weight_distribution.png", "final"):
        path = HERE / "workdir" / stray
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (HERE / "expected.json").write_text(json.dumps({
        "tokens": TOKENS.tolist(), "logits_sum": float(logits.sum()), "logits_first": logits[0, 0, 0, :8].tolist(),
        "logits_shape": list(logits.shape), "losses": {str(k): v for k, v in full["losses"].items()}}, indent=1))


if __name__ == "__main__":
    main()
