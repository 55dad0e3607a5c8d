"""How good a critic is: its value at the last output token of held-out labelled solutions against ``is_correct``.

The critic is trained toward the sequence reward R = 1 (correct) / 0 (incorrect), so its value after the whole
solution estimates P(correct). Three numbers (``docs/formulas.md``, "Critic quality"):

- AUROC: the probability that a random correct solution gets a higher value than a random incorrect one, ties
  counting one half (the Mann–Whitney U statistic divided by n_pos · n_neg; Hanley & McNeil 1982). 0.5 = no
  better than chance, whatever the values' scale.
- Brier score: ``mean((clip(V, 0, 1) - R)^2)`` (Brier 1950); 0.25 is what a constant 0.5 scores.
- Explained variance: ``1 - Var(R - V) / Var(R)``; 0 = no better than the mean label, < 0 = worse.

plus a reliability table (values in ten equal bins of [0, 1]: mean value and fraction correct per bin) drawn as a
reliability plot.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from scipy.stats import rankdata

from wmtp_jax import alignment


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count 1/2), via average ranks.

    Raises:
      ValueError: ``labels`` hold only one class (the AUROC is undefined)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"AUROC needs both classes; got {n_pos} correct and {n_neg} incorrect")
    ranks = rankdata(scores)  # average ranks: tied scores share theirs
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(values, labels) -> float:
    """Mean squared error of ``clip(values, 0, 1)`` as a probability of ``labels``."""
    p = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    return float(np.mean((p - np.asarray(labels, np.float64)) ** 2))


def explained_variance(values, labels) -> float:
    """``1 - Var(labels - values) / Var(labels)`` (nan when the labels are constant)."""
    y = np.asarray(labels, np.float64)
    var = y.var()
    return float(1.0 - (y - np.asarray(values, np.float64)).var() / var) if var > 0 else float("nan")


def reliability(values, labels, bins: int = 10) -> list[dict]:
    """Per bin of ``clip(values, 0, 1)`` (``bins`` equal bins of [0, 1]): its range, count, mean value and
    fraction correct (empty bins are left out)."""
    p = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    y = np.asarray(labels, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append(
                {
                    "bin": [b / bins, (b + 1) / bins],
                    "count": int(sel.sum()),
                    "mean_value": float(p[sel].mean()),
                    "fraction_correct": float(y[sel].mean()),
                }
            )
    return rows


def quality(values, labels) -> dict:
    """``{"auroc", "brier", "explained_variance", "n", "n_correct", "reliability"}`` of final values against
    labels; the AUROC is None when the labels hold one class."""
    values, labels = np.asarray(values, np.float64), np.asarray(labels, bool)
    try:
        area = auroc(values, labels)
    except ValueError:
        area = None
    return {
        "auroc": area,
        "brier": brier(values, labels),
        "explained_variance": explained_variance(values, labels),
        "n": int(len(labels)),
        "n_correct": int(labels.sum()),
        "mean_value": float(values.mean()) if len(values) else float("nan"),
        "reliability": reliability(values, labels),
    }


@functools.partial(jax.jit, static_argnames=("graphdef",))
def final_values(graphdef, states: tuple, batch: dict[str, jax.Array]):
    """``(values, labels, has_output)`` float32 / float32 / bool ``[B]``: the value at each row's last output
    token (the last position with ``loss_mask`` 1; rows are one sequence each, padded), its reward, and whether
    the row has an output at all (padding rows do not)."""
    m = nnx.merge(graphdef, *states)
    values = m.forward(batch["tokens"], batch["positions"], batch["segment_ids"]).values
    final, has_output = alignment.last_output(values, batch["loss_mask"])
    return final, alignment.last_output(batch["rewards"], batch["loss_mask"])[0], has_output


def collect(graphdef, states: tuple, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Final values and labels (float64, bool ``[N]``) over ``batches`` (global arrays), padding rows dropped."""
    values, labels = [], []
    for batch in batches:
        v, y, ok = jax.device_get(final_values(graphdef, states, batch))
        ok = np.asarray(ok, bool)
        values.append(np.asarray(v, np.float64)[ok])
        labels.append(np.asarray(y)[ok] > 0.5)
    if not values:
        return np.zeros(0), np.zeros(0, bool)
    return np.concatenate(values), np.concatenate(labels)


def reliability_plot(result: dict, path: Path, title: str = "critic reliability") -> Path:
    """Writes the reliability plot of ``quality(...)["reliability"]`` (fraction correct against mean value per
    bin, marker area by count, the diagonal for a calibrated critic) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["reliability"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="calibrated")
    if rows:
        counts = np.asarray([r["count"] for r in rows], np.float64)
        ax.scatter(
            [r["mean_value"] for r in rows],
            [r["fraction_correct"] for r in rows],
            s=20 + 200 * counts / counts.max(),
            label="bins (area ~ count)",
        )
    area = "n/a" if result["auroc"] is None else f"{result['auroc']:.3f}"
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="value at the last output token (clipped to [0, 1])",
        ylabel="fraction correct",
        title=f"{title}\nAUROC {area}, Brier {result['brier']:.3f}, n {result['n']}",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
