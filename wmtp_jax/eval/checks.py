"""Validation of the generation jobs' sections (``eval``, ``rollout``), all problems at once."""

from __future__ import annotations

from wmtp_jax.data.benchmarks import BENCHMARKS, MBPP_FORMATS, MBPP_SPLITS, BenchmarkError, codecontests_files
from wmtp_jax.eval.protocols import PROTOCOLS, temperatures
from wmtp_jax.schema import ConfigChecker


def generation_problems(c, k: ConfigChecker, data, fsdp, group: str | None = None) -> None:
    """Adds to ``k`` every problem of the generation settings: the ``eval`` section (eval job, evaluation inside
    training) or the ``rollout`` section (``group``, default ``c.job``); ``data`` x ``fsdp`` are the mesh's
    data-parallel devices (None when the mesh itself is invalid)."""
    group = group or c.job
    if group == "eval":
        k.check(
            "eval.benchmarks",
            lambda v: len(v) > 0 and set(v) <= set(BENCHMARKS),
            f"a non-empty tuple of {list(BENCHMARKS)}",
        )
        k.one_of("eval.mbpp_format", MBPP_FORMATS)
        k.check(
            "eval.k",
            lambda v: len(v) > 0 and all(isinstance(x, int) and 1 <= x <= c.eval.n_samples for x in v),
            f"a non-empty tuple of integers in [1, eval.n_samples={c.eval.n_samples}]",
        )
        k.one_of("eval.protocol", tuple(PROTOCOLS))
        k.check(
            "eval.k_temperatures",
            lambda v: not v or (len(v) == len(c.eval.k) and all(isinstance(t, (int, float)) and t >= 0 for t in v)),
            f"() or one non-negative temperature per eval.k={tuple(c.eval.k)}",
        )
        k.check(
            "eval.speculative",
            lambda v: not v or all(t == 0 for t in temperatures(c.eval)),
            "False unless every temperature is 0 (self-speculative decoding is greedy only)",
        )
        k.positive("eval.bootstrap")
        paths = "eval.codecontests"
    else:
        k.one_of("rollout.source", BENCHMARKS)
        k.one_of("rollout.mbpp_split", tuple(MBPP_SPLITS))
        k.positive("rollout.max_length")
        paths = "rollout.codecontests"
    uses_codecontests = "codecontests" in (c.eval.benchmarks if group == "eval" else (c.rollout.source,))
    if uses_codecontests:
        try:
            codecontests_files(getattr(c, group).codecontests)
        except BenchmarkError as e:
            k.found.append(f"{paths}={tuple(getattr(c, group).codecontests)!r}: {e}")
    for key in ("n_samples", "max_new_tokens", "batch_size", "memory_mb"):
        k.positive(f"{group}.{key}")
    k.positive(f"{group}.timeout_s", integer=False)
    k.check(f"{group}.limit", lambda v: isinstance(v, int) and v >= 0, "0 (all problems) or a positive integer")
    k.check(f"{group}.temperature", lambda v: v >= 0, "a non-negative number (0 = greedy)")
    k.check(f"{group}.top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    k.check(
        f"{group}.prompt_buckets",
        lambda v: len(v) > 0 and all(isinstance(b, int) and b > 0 for b in v),
        "a non-empty tuple of positive prompt lengths",
    )
    b = getattr(c, group).batch_size
    if data is not None and isinstance(b, int) and b % (data * fsdp):
        k.found.append(
            f"{group}.batch_size={b}: must be a multiple of the {data * fsdp} data-parallel devices (mesh data x fsdp)"
        )
