"""The token-weighting interface: what a scheme may read, what it returns, and the registry of schemes.

A scheme is a small class: it declares the per-target statistics it ``needs`` (``STATISTICS``), and from a
``TokenStats`` holding them it returns weights ``w[b, p, k]`` for head k's target at position p (token p+k+1)
and the normaliser ``D_k`` of that head's weighted CE (``docs/formulas.md``, "The training loss"):

    loss_k = sum_{b,p} w[b,p,k] * CE[b,p,k] / D_k

The train step computes only the statistics the chosen scheme declares (no entropy pass unless a scheme asks for
it); no gradient ever flows through the weights. ``weighting.control`` (the shuffled control) and
``weighting.strength`` apply to whatever a scheme returns. Add a scheme with ``@register`` in a module of this
package imported by ``wmtp_jax/weighting/__init__.py`` (README, "Add your own weighting").
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

# statistics a scheme may declare beyond the policy CE and the valid mask, which every scheme gets:
#   probability   p_theta(target) of the policy head, exp(-CE)
#   entropy       H = -sum_v p_v log p_v of the policy head's whole predictive distribution (an extra pass over the
#                 vocabulary inside the chunked CE)
#   reference_ce  a frozen reference model's CE of the same target token (objective rho1)
#   td_weights    the TD-exp weights of the value head (objective verifiable)
#   history_ce    the CE of the same target under the policy's history copy (its EMA; ``weighting.history_decay``):
#                 one more forward of the policy, without gradient, and one more copy of its trained parameters
#   token_labels  precomputed 0/1 labels per target token streamed with the batch (``weighting.token_labels``)
STATISTICS = ("probability", "entropy", "reference_ce", "td_weights", "history_ce", "token_labels")


@dataclasses.dataclass(frozen=True)
class TokenStats:
    """What a scheme reads for one micro-batch, all ``[B, S, H]`` in the MTP layout (head k at position p: target
    token p+k+1). float32 unless noted; a statistic the scheme did not declare is None."""

    ce: jax.Array  # -log p_theta(target), the training forward's own (no gradient here)
    valid: jax.Array  # bool: the target counts (response token, same packed sequence, inside the row)
    entropy: jax.Array | None = None  # nats
    reference_ce: jax.Array | None = None
    td_weights: jax.Array | None = None
    history_ce: jax.Array | None = None
    token_labels: jax.Array | None = None

    @property
    def probability(self) -> jax.Array:
        """``p_theta(target) = exp(-CE)`` in [0, 1]."""
        return jnp.exp(-self.ce)


class TokenWeighting:
    """Base class of a scheme; ``cfg`` is the ``weighting`` config section (a scheme reads its own keys there).

    Subclasses set ``name`` (the ``weighting.scheme`` value) and ``needs`` (a subset of ``STATISTICS``) and
    implement ``weights``; ``normaliser`` defaults to the number of valid targets per head."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def weights(self, stats: TokenStats) -> jax.Array:
        """float32 ``[B, S, H]`` weights, 0 on invalid targets."""
        raise NotImplementedError

    def normaliser(self, n_valid: jax.Array) -> jax.Array:
        """``D_k`` from the number of valid targets per head ``[H]`` of the global batch (from the masks alone, before
        any forward pass, so that gradient accumulation gives the big-batch gradient exactly)."""
        return n_valid


WEIGHTINGS: dict[str, type[TokenWeighting]] = {}


def register(cls: type[TokenWeighting]) -> type[TokenWeighting]:
    """Class decorator: makes ``cls`` selectable as ``weighting.scheme=cls.name``. Raises ValueError for an empty
    or taken name, or a statistic not in ``STATISTICS``."""
    if not cls.name or cls.name in WEIGHTINGS:
        raise ValueError(f"weighting scheme {cls.__name__}: name {cls.name!r} is empty or already registered")
    unknown = set(cls.needs) - set(STATISTICS)
    if unknown:
        raise ValueError(f"weighting scheme {cls.name!r} needs {sorted(unknown)}: expected some of {STATISTICS}")
    WEIGHTINGS[cls.name] = cls
    return cls


def make(name: str, cfg: Any) -> TokenWeighting:
    """The scheme registered as ``name``, configured by the ``weighting`` section ``cfg``; raises ValueError naming
    the registered schemes."""
    if name not in WEIGHTINGS:
        raise ValueError(f"weighting.scheme={name!r}: expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](cfg)


@register
class Uniform(TokenWeighting):
    """Weight 1 on every target: plain (multi-token) maximum likelihood, the baseline."""

    name = "uniform"

    def weights(self, stats: TokenStats) -> jax.Array:
        return jnp.where(stats.valid, 1.0, 0.0)
