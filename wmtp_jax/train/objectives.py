"""Training objectives: what each experiment trains, what it needs, and how it weights target tokens.

Every objective shares one loss (``docs/formulas.md``, "The training loss"):

    loss = sum_k lambda_k * (sum_{b,p} w[b,p,k] * CE[b,p,k]) / D_k  +  c_V * sum_p l(V_p - target_p) / D_V

An objective answers four questions, and ``step.micro_batch_loss`` composes the answers without ever looking
at its name:
  * ``trainable()``: which parameters get gradients and optimizer state (an ``nnx`` filter);
  * ``trains_policy`` / ``trains_value``: whether the CE term and the value term are in the loss;
    ``needs_reference``: whether a frozen reference model runs in the step;
  * ``scheme``: the token weighting (``wmtp_jax.weighting``; ``weighting.scheme``, else the objective's own):
    ``w`` (``[B, S, H]``, no gradient) from the statistics the scheme declares and the objective ``provides``,
    and ``D_k`` from the number of valid targets per head of the global batch.

``OBJECTIVES`` maps the config's ``objective`` key to the class.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
from flax import nnx

from wmtp_jax import alignment, losses
from wmtp_jax import weighting as schemes
from wmtp_jax.model.quant import QUANTIZED
from wmtp_jax.schema import Section
from wmtp_jax.weighting import probability, rho1, td


@dataclasses.dataclass(frozen=True)
class WeightingConfig(Section):
    """The ``weighting`` section of a training config (field names are the config keys).

    TD-exp weights: ``gamma``, ``gae_lambda``, ``beta``, ``w_min``, ``w_max``, ``whiten``, ``ema_decay``; value loss:
    ``value_coef``, ``value_loss`` (mse | huber to the target; pairwise: Bradley–Terry on the final values of the
    ``pairs`` strategy's (correct, incorrect) rows), ``huber_delta``, ``value_target`` (mc | lambda); Rho-1:
    ``rho1_mode`` (signed | absolute), ``rho1_select`` (hard | soft), ``rho1_ratio``, ``rho1_temperature``,
    ``rho1_eps``, ``rho1_w_max``, ``rho1_normalize`` (selected | valid), ``rho1_reference_ce`` (a precomputed
    reference-CE table instead of a reference forward), ``rho1_scheme`` ("rho1", the paper, or "seed", the
    design documents' variant, with ``rho1_top_p``, ``rho1_alpha``, ``rho1_temperature``, ``rho1_eps``, ``rho1_w_max``);
    ``scheme``: the token weighting (``wmtp_jax.weighting.WEIGHTINGS``: uniform, dft, entropy, probability, sstoken,
    token_cleaning, rho1, td, ...; "" = the objective's own: uniform for baseline / ref_tuning, rho1, td for
    verifiable); ``entropy_ratio``: the entropy scheme's top fraction rho; ``prob_alpha``, ``prob_keep`` (all | top |
    bottom), ``prob_threshold``: the probability family's alpha, threshold side and q; ``sstoken_ratio``: the
    fraction ssToken keeps; ``history_decay`` / ``history_dtype``: the policy's EMA that ssToken compares with (1 =
    the starting model, kept); ``token_labels``: the prefix of the Token Cleaning labels
    (``scripts/precompute_ref_ce.py --base``);
    ``control``: shuffle the weights over the valid targets; ``strength`` lambda: every scheme's weights move toward
    uniform, ``w <- 1 + lambda (w - 1)``, and its normaliser toward the valid count (0 = the unweighted baseline's
    loss exactly, 1 = the scheme as it is).
    """

    scheme: str = ""
    entropy_ratio: float = 0.2
    prob_alpha: float = 1.0
    prob_keep: str = "all"
    prob_threshold: float = 0.0
    sstoken_ratio: float = 0.6
    history_decay: float = 0.99
    history_dtype: str = "bfloat16"
    token_labels: str = ""
    control: bool = False
    gamma: float = 1.0
    gae_lambda: float = 0.0
    beta: float = 0.9
    w_min: float = 0.1
    w_max: float = 5.0
    whiten: bool = False
    ema_decay: float = 0.99
    value_coef: float = 0.5
    value_loss: str = "mse"
    huber_delta: float = 1.0
    value_target: str = "mc"
    rho1_mode: str = "signed"
    rho1_select: str = "hard"
    rho1_ratio: float = 0.6
    rho1_temperature: float = 1.0
    rho1_eps: float = 0.05
    rho1_w_max: float = 3.0
    rho1_normalize: str = "selected"
    rho1_reference_ce: str = ""
    rho1_scheme: str = "rho1"
    rho1_top_p: float = 0.2
    rho1_alpha: float = 0.3
    strength: float = 1.0

    def problems(self, prefix: str = "weighting") -> list[str]:
        c = self.checker(prefix)
        c.positive("beta", integer=False)
        c.check("scheme", lambda v: v == "" or v in schemes.WEIGHTINGS, f"'' or one of {sorted(schemes.WEIGHTINGS)}")
        for key in ("gamma", "gae_lambda", "ema_decay", "rho1_ratio", "entropy_ratio", "sstoken_ratio"):
            c.fraction(key)
        for key in ("history_decay", "prob_threshold"):
            c.fraction(key)
        c.check("prob_alpha", lambda v: v >= 0, "a non-negative exponent (0 = NLL, 1 = -p)")
        c.one_of("prob_keep", probability.KEEP)
        c.one_of("history_dtype", ("bfloat16", "float32"))
        if self.scheme == "token_cleaning" and not self.token_labels:
            c.found.append(
                f"{prefix}.token_labels: the token_cleaning scheme needs the prefix of the labels written by "
                "scripts/precompute_ref_ce.py --base"
            )
        c.check("w_min", lambda v: 0 <= v <= self.w_max, "0 <= w_min <= weighting.w_max")
        c.one_of("value_loss", ("mse", "huber", "pairwise"))
        c.one_of("value_target", ("mc", "lambda"))
        c.one_of("rho1_mode", ("signed", "absolute"))
        c.one_of("rho1_select", rho1.SELECTIONS)
        c.one_of("rho1_scheme", rho1.SCHEMES)
        for key in ("rho1_top_p", "rho1_alpha"):
            c.fraction(key)
        c.check("strength", lambda v: v >= 0, "a non-negative number (0 = unweighted, 1 = the scheme's weights)")
        c.one_of("rho1_normalize", ("selected", "valid"))
        return c.found


CRITIC_TRAIN = ("head", "full", "lora")
SECOND_MODEL_DTYPES = ("float32", "bfloat16", "nf4", "int8")  # reference.dtype / critic.dtype (nf4, int8: quantised)


@dataclasses.dataclass(frozen=True)
class CriticConfig(Section):
    """The ``critic`` section: where the verifiable experiment's values come from.

    ``model``: "" = the value head on the policy's MTP trunk; a checkpoint path (Meta / Hugging Face / Orbax
    LLaMA with the same tokenizer, e.g. stage 1's ``final/``) = a separate value model with its own value head.
    In stage 1 (``critic``) that model is the one trained; in stage 2 (``verifiable``) it runs frozen inside the
    step, as the Rho-1 reference does, stored in ``dtype``. ``train`` (stage 1): ``head`` (frozen body), ``full``
    or ``lora`` (the ``model.lora`` adapters + the head); ``head``: ``linear`` or ``mlp`` (stage 1 gives the model a
    fresh ``d -> head_hidden -> 1`` GELU head with a zero output layer and training dropout ``head_dropout`` on
    its hidden layer, recorded in its config, so stage 2 and any later load get the same head). ``co_train``
    (stage 2 with a separate critic): keep training the critic (its head, or all of it with ``train=full``) with
    the value loss, ``weighting.value_coef``, instead of running it frozen; it then ends up in the run's
    ``final/critic``. ``allow_untrained``: let ``verifiable`` start from a zero
    value head. Stage 2 with the policy's own value head keeps it near stage 1's (the anchor, read when the trainer
    is built): ``value_clip`` (PPO-style clipping of V around the anchor head's value) and ``anchor_coef`` (a
    squared-distance penalty); the L2 distance is reported as ``critic_param_distance`` either way."""

    model: str = ""
    train: str = "head"
    head: str = "linear"  # stage 1: linear | mlp (a fresh d -> head_hidden -> 1 head replaces the linear one)
    head_hidden: int = 1024
    head_dropout: float = 0.0
    co_train: bool = False
    dtype: str = "bfloat16"
    allow_untrained: bool = False
    value_clip: float = 0.0  # stage 2: clip V to V_stage1 +- this in the value loss (PPO-style); 0 = off
    anchor_coef: float = 0.0  # stage 2: + coef * ||theta_value_head - theta_stage1||^2; 0 = off

    def problems(self, prefix: str = "critic") -> list[str]:
        c = self.checker(prefix)
        c.one_of("train", CRITIC_TRAIN)
        c.one_of("head", ("linear", "mlp"))
        c.positive("head_hidden")
        c.check("head_dropout", lambda v: 0 <= v < 1, "a rate in [0, 1)")
        c.one_of("dtype", SECOND_MODEL_DTYPES)
        if self.co_train and self.train == "full" and self.dtype in ("nf4", "int8"):
            c.found.append(f"{prefix}.dtype={self.dtype!r}: a quantised critic can only co-train its head (train=head)")
        if self.head_dropout and self.head != "mlp":
            c.found.append(f"{prefix}.head_dropout: dropout acts on the mlp head's hidden layer; set {prefix}.head=mlp")
        if self.co_train and self.train == "lora":
            c.found.append(
                f"{prefix}.co_train: a co-trained critic trains its head (train=head) or all of it (train=full); "
                "stage 1's adapters are merged into its final/"
            )
        c.check("value_clip", lambda v: v >= 0, "a non-negative number (0 = no clipping)")
        c.check("anchor_coef", lambda v: v >= 0, "a non-negative number (0 = no anchor penalty)")
        return c.found


@dataclasses.dataclass(frozen=True)
class Signals:
    """What a token-weight function may read in one micro-batch (all ``[B, S, H]`` unless noted)."""

    ce: jax.Array  # float32 policy cross-entropy per target (the training forward's own)
    valid: jax.Array  # bool: the target counts
    # the micro-batch: [B, S] arrays ("ref_ce" / "token_labels" when a precomputed table streams), and
    # "history_ce" [B, S, H] when the scheme compares with the policy's history copy (computed by the step)
    batch: dict[str, jax.Array]
    n_heads: int
    reference: Any = None  # the frozen reference model (``needs_reference``), or None
    td_weights: jax.Array | None = None  # [B, S] target-aligned TD-exp weights (``uses_td``)
    ce_tokens: int = 0  # ``train.ce_tokens``: the reference, too, projects only the valid targets
    entropy: jax.Array | None = None  # float32 entropy of each head's distribution (when the scheme needs it)


@dataclasses.dataclass(frozen=True)
class Objective:
    """Base class: unweighted multi-token prediction of every head (the baseline)."""

    weighting: WeightingConfig = WeightingConfig()
    critic: CriticConfig = CriticConfig()
    name: ClassVar[str] = "baseline"
    trains_policy: ClassVar[bool] = True  # the weighted CE term
    trains_value: ClassVar[bool] = False  # the value-loss term
    uses_td: ClassVar[bool] = False  # TD errors from the value head are computed in the step
    default_scheme: ClassVar[str] = "uniform"  # the token weighting when ``weighting.scheme`` is ""
    # statistics its step can compute
    provides: ClassVar[frozenset[str]] = frozenset({"probability", "entropy", "history_ce", "token_labels"})

    @functools.cached_property
    def scheme(self) -> schemes.TokenWeighting:
        """The token weighting: ``weighting.scheme``, else ``default_scheme``."""
        return schemes.make(self.weighting.scheme or self.default_scheme, self.weighting)

    def needs(self, statistic: str) -> bool:
        """The step must compute ``statistic`` (one of ``weighting.STATISTICS``) for the scheme."""
        return self.trains_policy and statistic in self.scheme.needs

    def scheme_problems(self) -> list[str]:
        """What the chosen scheme needs and this objective cannot give (``weighting.scheme``)."""
        if not self.weighting.scheme or self.weighting.scheme not in schemes.WEIGHTINGS:
            return []
        if not self.trains_policy:
            return [f"weighting.scheme={self.weighting.scheme!r}: objective {self.name!r} trains no policy"]
        missing = sorted(self.scheme.needs - self.provides)
        hint = {"reference_ce": "objective=rho1", "td_weights": "objective=verifiable"}
        return [
            f"weighting.scheme={self.weighting.scheme!r} needs {m}: objective {self.name!r} does not compute it "
            f"(use {hint.get(m, 'another objective')})"
            for m in missing
        ]

    @property
    def needs_reference(self) -> bool:
        """A frozen second model runs in the step: the Rho-1 reference, or the verifiable objective's separate
        critic (``separate_critic``)."""
        return False

    @property
    def separate_critic(self) -> bool:
        """The values (TD weights) come from the frozen second model instead of the policy's value head."""
        return False

    @property
    def co_trains_critic(self) -> bool:
        """The separate critic (``separate_critic``) is trained in the step too (``critic.co_train``)."""
        return self.separate_critic and self.critic.co_train

    @property
    def trains_value_head(self) -> bool:
        """The value-loss term is in the loss (``trains_value`` and the values come from a trained value head: the
        model's own, or a co-trained separate critic's)."""
        return self.trains_value and (not self.separate_critic or self.co_trains_critic)

    def critic_trainable(self):
        """nnx filter of a co-trained separate critic's trained parameters: its value head (``critic.train=head``)
        or everything (``full``)."""
        if self.critic.train == "head":
            return nnx.All(nnx.Param, nnx.PathContains("value_head"))
        return nnx.Param

    @property
    def uses_anchor(self) -> bool:
        """Stage 2 trains a value head that stage 1 trained: keep a copy of it (the anchor) for clipping, the
        anchor penalty and the distance monitor."""
        return self.trains_value_head and self.trains_policy

    def trainable(self):
        """nnx filter of the trained parameters (the rest is frozen and gets no optimizer state)."""
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("value_head")))

    @property
    def history_dtype(self) -> str:
        """dtype of the policy's history copy the train state keeps ("" = none: the scheme needs no history)."""
        return self.weighting.history_dtype if self.needs("history_ce") else ""

    @property
    def tables(self) -> dict[str, str]:
        """Precomputed per-token tables streamed with each batch: batch key -> file prefix."""
        return {"token_labels": self.weighting.token_labels} if self.needs("token_labels") else {}

    def statistics(self, s: Signals) -> schemes.TokenStats:
        """The statistics the scheme declared, from the micro-batch's signals."""
        stats = schemes.TokenStats(ce=s.ce, valid=s.valid, entropy=s.entropy)
        if self.needs("history_ce"):
            stats = dataclasses.replace(stats, history_ce=s.batch["history_ce"])
        if self.needs("token_labels"):
            stats = dataclasses.replace(stats, token_labels=alignment.per_head(s.batch["token_labels"], s.n_heads))
        return stats

    def token_weights(self, s: Signals) -> jax.Array:
        return self.scheme.weights(self.statistics(s))

    def normaliser(self, n_valid: jax.Array) -> jax.Array:
        """``D_k`` of the CE term from the number of valid targets per head ``[H]`` of the global batch."""
        return self.scheme.normaliser(n_valid)

    def weights(self, s: Signals) -> jax.Array:
        """``token_weights`` moved toward uniform by ``weighting.strength`` (lambda): ``1 + lambda (w - 1)``."""
        w, strength = self.token_weights(s), self.weighting.strength
        return w if strength == 1.0 else 1.0 + strength * (w - 1.0)

    def denominator(self, n_valid: jax.Array) -> jax.Array:
        """``normaliser`` moved toward the valid count by ``weighting.strength``: ``n + lambda (D - n)``."""
        d, strength = self.normaliser(n_valid), self.weighting.strength
        return d if strength == 1.0 else n_valid + strength * (d - n_valid)

    @property
    def value_coef(self) -> float:
        """``c_V``: the value term's coefficient (1 when the value head is the only thing trained)."""
        return self.weighting.value_coef if self.trains_policy else 1.0


class Baseline(Objective):
    """Every valid target has weight 1; all heads are trained, the value head is not."""


class RefTuning(Baseline):
    """Plain next-token SFT of the Rho-1 reference (an ``n_future_tokens = 1`` model): weight 1."""

    name: ClassVar[str] = "ref_tuning"


class Critic(Objective):
    """Stage 1 of the verifiable experiment: only the value head is trained, toward the sequence reward."""

    name: ClassVar[str] = "critic"
    trains_policy: ClassVar[bool] = False
    trains_value: ClassVar[bool] = True
    uses_td: ClassVar[bool] = True

    def trainable(self):
        """``critic.train``: the value head (``head``), everything (``full``), or with LoRA applied the adapters +
        the head (``lora``: the Trainer restricts ``nnx.Param`` to them)."""
        if self.critic.train == "head":
            return nnx.All(nnx.Param, nnx.PathContains("value_head"))
        return nnx.Param


class Verifiable(Objective):
    """Stage 2: TD-exp weights from the value head; the policy and the value head are trained together. With a
    separate critic (``critic.model``) the values come from that frozen model and only the policy is trained."""

    name: ClassVar[str] = "verifiable"
    trains_value: ClassVar[bool] = True
    uses_td: ClassVar[bool] = True
    default_scheme: ClassVar[str] = "td"
    provides: ClassVar[frozenset[str]] = Objective.provides | {"td_weights"}

    @property
    def separate_critic(self) -> bool:
        return bool(self.critic.model)

    @property
    def needs_reference(self) -> bool:
        return self.separate_critic

    def trainable(self):
        if self.separate_critic:  # the policy's own value head is not used
            return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("value_head")))
        return nnx.Param

    def statistics(self, s: Signals) -> schemes.TokenStats:
        stats = super().statistics(s)
        return dataclasses.replace(stats, td_weights=alignment.per_head(s.td_weights, s.n_heads))


class Rho1(Objective):
    """Rho-1 excess-loss weights against a frozen reference (or a precomputed reference-CE table)."""

    name: ClassVar[str] = "rho1"
    default_scheme: ClassVar[str] = "rho1"
    provides: ClassVar[frozenset[str]] = Objective.provides | {"reference_ce"}

    @property
    def needs_reference(self) -> bool:
        return self.needs("reference_ce") and not self.weighting.rho1_reference_ce

    @property
    def tables(self) -> dict[str, str]:
        tables = super().tables
        if self.needs("reference_ce") and self.weighting.rho1_reference_ce:
            tables["ref_ce"] = self.weighting.rho1_reference_ce
        return tables

    def statistics(self, s: Signals) -> schemes.TokenStats:
        stats = super().statistics(s)
        if not self.needs("reference_ce"):
            return stats
        ref_tok = s.batch["ref_ce"] if "ref_ce" in s.batch else reference_ce(s.reference, s.batch, s.ce_tokens)
        return dataclasses.replace(stats, reference_ce=alignment.per_head(ref_tok, s.n_heads))


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (Baseline, Critic, Verifiable, Rho1, RefTuning)}


def make_objective(
    name: str, weighting: WeightingConfig = WeightingConfig(), critic: CriticConfig = CriticConfig()
) -> Objective:
    """The objective called ``name`` (a key of ``OBJECTIVES``); raises ValueError naming the choices."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r}: expected one of {list(OBJECTIVES)}")
    return OBJECTIVES[name](weighting, critic)


def objective_of(c) -> Objective:
    """The objective a training config names (``c.objective`` with its ``weighting`` and ``critic`` sections)."""
    return make_objective(c.objective, c.weighting, c.critic)


def trained_model(c) -> str:
    """The checkpoint a training config trains (before ``model.init_from``): the separate critic in stage 1 with
    ``critic.model``, else ``model.checkpoint``."""
    return c.critic.model if c.objective == "critic" and c.critic.model else c.model.checkpoint


def second_model(c) -> tuple[str, str]:
    """``(checkpoint, dtype)`` of the frozen second model the objective of ``c`` runs in its step (the Rho-1
    reference or the verifiable objective's separate critic), or ``("", "")``."""
    objective = objective_of(c)
    if not objective.needs_reference:
        return "", ""
    if objective.separate_critic:
        return c.critic.model, c.critic.dtype
    return c.reference.checkpoint, c.reference.dtype


def second_model_dtypes(c) -> tuple[str, str, str]:
    """``(compute dtype, parameter dtype, quantisation)`` of the second model (``reference.dtype`` /
    ``critic.dtype``): frozen, its weights are stored in its compute dtype; "nf4" / "int8" compute in bfloat16 and
    store the block projections quantised (``lora.quantize_base``); a co-trained critic keeps master weights in
    ``model.param_dtype``, like the policy."""

    dtype = second_model(c)[1]
    if dtype in QUANTIZED:
        return "bfloat16", "bfloat16", dtype
    return dtype, c.model.param_dtype if objective_of(c).co_trains_critic else dtype, ""


def frozen_ce(model, batch, n_heads: int, ce_tokens: int = 0) -> jax.Array:
    """CE ``[B, S, n_heads]`` of each head's target under ``model``, run without dropout and without gradient (the
    Rho-1 reference, the policy's history copy). ``ce_tokens > 0``: only the valid targets are projected, at most
    that many (a subset of the training forward's, which the step checks fit)."""
    targets, valid = alignment.mtp_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"], n_heads)
    out = model.forward(batch["tokens"], batch["positions"], batch["segment_ids"])
    if ce_tokens:
        ce, _ = losses.valid_token_ce(model.output_projection(), out.head_hidden, targets, valid, capacity=ce_tokens)
    else:
        ce = losses.token_ce(model.output_projection(), out.head_hidden, targets)
    return jax.lax.stop_gradient(ce)


def reference_ce(reference, batch, ce_tokens: int = 0) -> jax.Array:
    """The frozen reference's next-token CE, target-token aligned ``[B, S]`` (no gradient)."""
    return alignment.next_token_to_target(frozen_ce(reference, batch, 1, ce_tokens)[..., 0])


def td_weights(weighting: WeightingConfig, values, batch, ema):
    """TD-exp weights ``[B, S]``, advantages ``[B, S]`` and the new whitening EMA (unchanged unless whitening)."""
    w = weighting
    weights, adv, whitened = td.td_weights(
        values,
        batch["rewards"],
        batch["loss_mask"],
        gamma=w.gamma,
        lam=w.gae_lambda,
        beta=w.beta,
        w_min=w.w_min,
        w_max=w.w_max,
        ema=ema if w.whiten else None,
        ema_decay=w.ema_decay,
    )
    return weights, adv, (whitened if w.whiten else ema)
