"""Token weights for the weighted MTP loss: pure functions of arrays, no gradient ever flows through them.

All weights are *target-token aligned* where a scheme computes them from one value per token (TD weights, the
reference CE): ``w[b, t]`` is the weight of token ``tokens[b, t]`` as a target, and
``wmtp_jax.alignment.per_head`` maps them to the MTP layout: head k at position p predicts token p+k+1, so it
gets ``w[b, p + k + 1]``. The schemes (``base.TokenWeighting``, selected by ``weighting.scheme``) return weights
in the MTP layout ``[B, S, H]``. Importing this package registers every scheme in ``WEIGHTINGS``.
"""

from wmtp_jax.weighting import dft, entropy, probability, rho1, sstoken, td, token_cleaning
from wmtp_jax.weighting.base import STATISTICS, WEIGHTINGS, TokenStats, TokenWeighting, make, register
from wmtp_jax.weighting.common import control_shuffle, weight_stats

__all__ = [
    "STATISTICS",
    "WEIGHTINGS",
    "TokenStats",
    "TokenWeighting",
    "control_shuffle",
    "dft",
    "entropy",
    "make",
    "probability",
    "register",
    "rho1",
    "sstoken",
    "td",
    "token_cleaning",
    "weight_stats",
]
