"""Published evaluation protocols: named sets of the ``eval`` section's sampling keys (``docs/evaluation.md``).

``eval.protocol=NAME`` writes a preset's keys into the eval section before the other ``--config.eval.*``
overrides (``config.apply_overrides`` with ``run_config.PRESETS``), so an explicit key still wins; results.json
records the protocol and every key that differs from it. Stop sequences and prompt formats are the benchmarks'
own (``data/benchmarks.py``).
"""

from __future__ import annotations

from typing import Any

from wmtp_jax.schema import frozen

PROTOCOLS: dict[str, dict[str, Any]] = {
    # one greedy completion per problem: cheap, deterministic; the local and :micro default
    "greedy": {
        "n_samples": 1,
        "k": (1,),
        "temperature": 0.0,
        "k_temperatures": (),
        "top_p": 0.95,
        "max_new_tokens": 512,
    },
    # Gloeckle et al. 2024 (arXiv 2404.19737), MBPP / HumanEval: 200 samples per problem, pass@1 / 10 / 100 with the
    # unbiased estimator; the paper sweeps temperature, these are the design's choices from it (0.1-0.2 for pass@1,
    # 0.8 for pass@10 / 100)
    "mtp_paper": {
        "n_samples": 200,
        "k": (1, 10, 100),
        "temperature": 0.2,
        "k_temperatures": (0.2, 0.8, 0.8),
        "top_p": 0.95,
        "max_new_tokens": 512,
    },
    # the design's CodeContests protocol: pass@1 and pass@5 at T = 0.2, top-p 0.95 (10 samples per problem)
    "codecontests": {
        "n_samples": 10,
        "k": (1, 5),
        "temperature": 0.2,
        "k_temperatures": (),
        "top_p": 0.95,
        "max_new_tokens": 1024,
    },
}


def temperatures(e) -> dict[float, tuple[int, ...]]:
    """``{temperature: the ks estimated from the samples drawn at it}`` of an eval section, in order of the ks:
    ``k_temperatures`` pairs each k with its own, else every k uses ``temperature``."""
    pairs = zip(e.k, e.k_temperatures) if e.k_temperatures else ((k, e.temperature) for k in e.k)
    out: dict[float, tuple[int, ...]] = {}
    for k, t in pairs:
        out[float(t)] = (*out.get(float(t), ()), k)
    return out


def deviations(e) -> dict[str, Any]:
    """The keys of eval section ``e`` whose values differ from its protocol's (``{key: value}``)."""
    preset = PROTOCOLS.get(e.protocol, {})
    return {key: getattr(e, key) for key, value in preset.items() if frozen(getattr(e, key)) != frozen(value)}
