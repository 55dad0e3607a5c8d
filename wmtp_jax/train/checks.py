"""Validation of a training config, all problems at once (the training job's part of ``wmtp_jax.jobs``)."""

from __future__ import annotations

import os

from wmtp_jax.data.records import index_path
from wmtp_jax.eval.checks import generation_problems
from wmtp_jax.schema import ConfigChecker
from wmtp_jax.train.loop import batch_rows
from wmtp_jax.train.objectives import OBJECTIVES, SECOND_MODEL_DTYPES, objective_of


def training_problems(c, k: ConfigChecker, data, fsdp, n_processes: int) -> None:
    """Adds to ``k`` every problem of a training config: each typed section checks its own values; what spans
    sections (paths that must exist, batch and mesh sizes, objective-specific needs) is checked here."""

    k.one_of("objective", tuple(OBJECTIVES))
    k.found += c.train.problems("train") + c.checkpoint.problems("checkpoint") + c.weighting.problems("weighting")
    if c.objective in OBJECTIVES:
        k.found += objective_of(c).scheme_problems()
    critic = c.critic
    k.found += critic.problems("critic")
    k.one_of("reference.dtype", SECOND_MODEL_DTYPES)
    if c.objective == "verifiable" and not c.model.init_from and not critic.model and not critic.allow_untrained:
        k.found.append(
            "model.init_from='': the verifiable objective needs a trained critic; set model.init_from to stage 1's "
            "output (e.g. workdir/critic/final), critic.model to a separately trained value model, or "
            "critic.allow_untrained=True to start from a zero value head (every token weight then comes from the "
            "reward alone)"
        )
    if critic.model:
        k.check("critic.model", os.path.isdir, "an existing checkpoint directory (torch or Orbax) of the value model")
    if c.objective == "critic" and critic.train == "lora" and not c.model.lora.rank:
        k.found.append("critic.train='lora': set model.lora.rank > 0 (the adapters the critic trains)")
    if c.weighting.value_loss == "pairwise":
        k.check("data.strategy", lambda v: v == "pairs", "'pairs' with weighting.value_loss='pairwise'")
        k.check("data.pack", lambda v: not v, "False with weighting.value_loss='pairwise' (one sequence per row)")
        k.check(
            "train.grad_accum_steps",
            lambda v: v == 1,
            "1 with weighting.value_loss='pairwise' (micro-batches would split the pairs)",
        )
    k.found += c.model.lora.problems("model.lora")
    if c.export is not None:
        k.check("export.hf", lambda v: isinstance(v, bool), "true or false")
        k.positive("export.hf_head")
        k.check("export.merge_lora", lambda v: isinstance(v, bool), "true or false")
    if c.train.eval_every_steps or c.train.eval_at_end:
        generation_problems(c, k, data, fsdp, group="eval")
    k.found += [f"data.{p}" for p in c.data.problems()]
    k.check(
        "data.buckets",
        lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
        "a non-empty tuple of positive sequence lengths",
    )
    k.check("data.num_workers", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    if not c.data.prepare_micro:
        for key in ("data.train",) + (("data.validation",) if c.data.validation else ()):
            k.check(
                key,
                lambda v: bool(v) and os.path.isfile(v) and index_path(v).is_file(),
                "a prepared .jsonl with its .index.npz beside it (scripts/prepare_data.py)",
            )
    if c.weighting.token_labels:
        k.check(
            "weighting.token_labels",
            lambda v: os.path.isfile(v + ".token_labels.npy"),
            "the prefix of {prefix}.token_labels.npy written by scripts/precompute_ref_ce.py --base",
        )
    if c.weighting.rho1_reference_ce:
        k.check(
            "weighting.rho1_reference_ce",
            lambda v: os.path.isfile(v + ".ref_ce.npy"),
            "the prefix of {prefix}.ref_ce.npy written by scripts/precompute_ref_ce.py",
        )
    elif c.objective == "rho1" and objective_of(c).needs_reference and not c.model.build_micro:
        k.check(
            "reference.checkpoint",
            lambda v: bool(v) and os.path.isdir(v),
            "the Rho-1 reference checkpoint directory (torch or Orbax)",
        )
    if c.train.batch_tokens:
        row = max(c.data.buckets) if len(c.data.buckets) else 0
        k.check("data.pack", bool, "True when train.batch_tokens > 0 (the budget is filled with packed rows)")
        k.check(
            "train.batch_tokens",
            lambda v: row > 0 and v % row == 0,
            f"a multiple of the packed row length max(data.buckets)={row}",
        )
    b, accum = batch_rows(c), c.train.grad_accum_steps
    name = f"train.batch_tokens={c.train.batch_tokens} ({b} rows)" if c.train.batch_tokens else f"train.batch_size={b}"
    if data is not None and isinstance(b, int) and isinstance(accum, int) and accum > 0:
        shards = data * fsdp
        if b % accum or (b // accum) % shards:
            k.found.append(
                f"{name}: must split into train.grad_accum_steps={accum} micro-batches "
                f"that each divide over the {shards} data-parallel devices (mesh data x fsdp)"
            )
        if b % n_processes:
            k.found.append(f"{name}: must be divisible by the {n_processes} processes")
