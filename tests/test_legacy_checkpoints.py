"""Model directories and train-state checkpoints written by the code before the trainer redesign still load.

The fixture (``tests/data/legacy``, made by ``make_fixture.py`` there on the last commit before the redesign):
a tiny converted model directory and a baseline workdir checkpointed at step 2 (packed in
``legacy_checkpoints.tar.gz``, unpacked once per session), the old code's logits of the model and the loss trace of
an uninterrupted 3-step run (``expected.json``).
"""

import importlib
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from wmtp_jax import sharding
from wmtp_jax.checkpoint import load_model
from wmtp_jax.checkpoint.policy import load_policy
from wmtp_jax.run_config import parse
from wmtp_jax.train import loop

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "legacy"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    """The unpacked fixture: ``model/`` and ``workdir/`` as the old code wrote them."""
    root = tmp_path_factory.mktemp("legacy_fixture")
    shutil.unpack_archive(FIXTURE / "legacy_checkpoints.tar.gz", root)
    return root


def test_legacy_model_directory_gives_the_old_logits(legacy):
    model = load_model(legacy / "model", sharding.make_mesh())
    logits = np.asarray(model(np.asarray(EXPECTED["tokens"], np.int32)))
    assert list(logits.shape) == EXPECTED["logits_shape"]
    np.testing.assert_allclose(logits[0, 0, 0, :8], EXPECTED["logits_first"], rtol=1e-6, atol=1e-7)
    assert float(logits.sum()) == pytest.approx(EXPECTED["logits_sum"], rel=1e-5)


@pytest.fixture(scope="module")
def legacy_workdir(legacy):
    """The legacy workdir with its config.json pointing at the unpacked model directory."""
    workdir = legacy / "workdir"
    config = json.loads((workdir / "config.json").read_text())
    config["model"]["checkpoint"] = str(legacy / "model")
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir


def test_legacy_train_state_resumes_exactly(legacy, legacy_workdir, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(legacy_workdir, workdir)
    sys.path.insert(0, str(REPO))
    c = importlib.import_module("configs.baseline").get_config("micro")
    c.model.checkpoint, c.model.build_micro, c.model.param_dtype = str(legacy / "model"), False, "bfloat16"
    c.data.cache_dir, c.workdir = str(tmp_path / "data"), str(workdir)
    c.train.num_steps, c.train.eval_batches = 3, 1
    c.checkpoint.every_steps, c.checkpoint.keep, c.checkpoint.async_save = 2, 1, False
    with jax.default_matmul_precision("highest"):
        result = loop.train(parse(c))
    assert list(result["losses"]) == [3]  # resumed after step 2
    assert result["losses"][3] == EXPECTED["losses"]["3"]  # bit for bit the old code's uninterrupted run


def test_legacy_training_workdir_restores_for_evaluation(legacy, legacy_workdir):
    mesh = sharding.make_mesh()
    model, description = load_policy(legacy_workdir, mesh)
    assert "step 2" in description
    base = load_model(legacy / "model", mesh)
    tokens = np.asarray(EXPECTED["tokens"], np.int32)
    trained, start = np.asarray(model(tokens)), np.asarray(base(tokens))
    assert np.abs(trained - start).max() > 1e-4  # the two trained steps are there
    np.testing.assert_array_equal(np.asarray(model.value_head.kernel[...]), np.asarray(base.value_head.kernel[...]))
