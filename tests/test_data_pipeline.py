"""Grain pipeline on the shipped MBPP data: masks, EOS, buckets, packing, workers, iterator save/restore."""

import numpy as np
import pytest

from wmtp_jax.data.pipeline import JsonlRecords, PipelineConfig, make_dataset
from wmtp_jax.data.prepare import prepare
from wmtp_jax.data.records import RecordIndex, format_prompt
from wmtp_jax.data.sampling import SamplingConfig, build_plan
from wmtp_jax.data.tokenizer import Tokenizer

TOK = Tokenizer()


@pytest.fixture(scope="module")
def mbpp(tmp_path_factory):
    out = tmp_path_factory.mktemp("mbpp")
    prepare("mbpp", out, split="train")
    index = RecordIndex.load(out / "train.index.npz")
    return out / "train.jsonl", index, build_plan(index, SamplingConfig("correct"), 64, seed=0)


def _batches(mbpp, n, **cfg):
    jsonl, index, plan = mbpp
    it = iter(make_dataset(jsonl, index.offsets(plan), TOK, PipelineConfig(**cfg)))
    return [next(it) for _ in range(n)]


def test_loss_mask_covers_output_and_eos_only(mbpp):
    jsonl, index, plan = mbpp
    (batch,) = _batches(mbpp, 1, batch_size=4)
    record = JsonlRecords(jsonl, index.offsets(plan))[0]
    prompt = TOK.encode(format_prompt(record["instruction"], record["input"]), bos=True)
    output = TOK.encode(record["output"])
    n = len(prompt) + len(output) + 1
    tokens, mask = batch["tokens"][0], batch["loss_mask"][0]
    assert tokens[0] == TOK.bos_id and tokens[n - 1] == TOK.eos_id
    np.testing.assert_array_equal(tokens[:n], prompt + output + [TOK.eos_id])
    assert mask[: len(prompt)].sum() == 0 and mask[len(prompt) : n].all() and mask[n:].sum() == 0
    assert batch["segment_ids"][0, :n].all() and not batch["segment_ids"][0, n:].any()
    assert batch["rewards"][0, 0] == 1.0


def test_batches_use_the_smallest_fitting_bucket(mbpp):
    for batch in _batches(mbpp, 8, batch_size=4, buckets=(128, 256, 512, 1024)):
        longest = batch["segment_ids"].sum(axis=1).max()
        assert batch["tokens"].shape[1] == min(b for b in (128, 256, 512, 1024) if b >= longest)


def test_packing_keeps_sequences_separate(mbpp):
    for batch in _batches(mbpp, 2, batch_size=2, pack=True, buckets=(1024,)):
        assert batch["tokens"].shape == (2, 1024)
        seg = batch["segment_ids"][0]
        assert seg.max() >= 2  # several sequences per row
        for s in range(1, seg.max() + 1):
            pos = batch["positions"][0][seg == s]
            np.testing.assert_array_equal(pos, np.arange(len(pos)))  # positions restart per sequence
            assert batch["tokens"][0][seg == s][0] == TOK.bos_id


def test_iterator_state_restores_the_following_batches(mbpp):
    jsonl, index, plan = mbpp
    ds = make_dataset(jsonl, index.offsets(plan), TOK, PipelineConfig(batch_size=4))
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_worker_processes_give_the_same_batches(mbpp):
    serial = _batches(mbpp, 3, batch_size=4)
    parallel = _batches(mbpp, 3, batch_size=4, num_workers=2)
    for a, b in zip(serial, parallel):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_stale_index_error_names_file_and_offset(mbpp):
    jsonl, _, _ = mbpp
    with pytest.raises(ValueError, match=r"train\.jsonl: no JSON record at byte 5"):
        JsonlRecords(jsonl, np.array([5]))[0]
