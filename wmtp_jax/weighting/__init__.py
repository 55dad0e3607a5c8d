"""Token weights for the weighted MTP loss: pure functions of arrays, no gradient ever flows through them.

All weights are *target-token aligned*: ``w[b, t]`` is the weight of token ``tokens[b, t]`` as a target.
``wmtp_jax.alignment.per_head`` maps them to the MTP layout: head k at position p predicts token p+k+1, so it gets
``w[b, p + k + 1]``.
"""

from wmtp_jax.weighting.common import control_shuffle, weight_stats

__all__ = ["control_shuffle", "weight_stats"]
