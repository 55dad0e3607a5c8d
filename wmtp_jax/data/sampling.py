"""Metadata-only sampling: which records a run sees, in which order, from the index alone.

Strategies (``docs/formulas.md``, "Data"):
  "correct"     every correct record once per epoch, shuffled (baseline, Rho-1, ref-tuning)
  "all"         every record once per epoch, shuffled
  "balanced"    correct / incorrect at ``correct_ratio`` (critic stage 1); an epoch is the largest mix the
                data holds without repeating a record, unless ``repeat`` lets the minority class repeat
  "curriculum"  difficulty bins whose proportions follow a schedule over training progress (stage 2)
  "pairs"       one correct and one incorrect solution of the same problem, adjacent in the order

``difficulty_range`` (inclusive ``(lo, hi)``; empty = every record) restricts every strategy to problems of that
difficulty (e.g. the critic's stage-1 range). ``epoch_size`` says how many draws one epoch of a strategy is, so that
``train.num_epochs`` can be turned into steps.

A plan is a deterministic function of (index, config, seed): an int64 array of record rows for the whole
run. ``shard_plan`` gives each process a disjoint part such that its local batches form the global batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wmtp_jax.data.records import RecordIndex
from wmtp_jax.schema import Section

STRATEGIES = ("correct", "all", "balanced", "curriculum", "pairs")


class SamplingError(ValueError):
    """The data cannot satisfy the sampling request; the message gives the counts available."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
    strategy: str = "correct"
    correct_ratio: float = 0.5
    repeat: bool = False
    # curriculum: inclusive difficulty ranges per bin, and (start fraction of training, bin proportions)
    bins: tuple[tuple[int, int], ...] = ((1, 3), (4, 7), (8, 11))
    schedule: tuple[tuple[float, tuple[float, ...]], ...] = (
        (0.0, (0.7, 0.3, 0.0)),
        (0.3, (0.3, 0.6, 0.1)),
        (0.7, (0.1, 0.5, 0.4)),
    )
    curriculum_correct_only: bool = False
    difficulty_range: tuple[int, ...] = ()  # (lo, hi) inclusive; () = all difficulties

    def problems(self) -> list[str]:
        out = []
        if self.strategy not in STRATEGIES:
            out.append(f"strategy={self.strategy!r}: expected one of {list(STRATEGIES)}")
        if not 0.0 < self.correct_ratio < 1.0:
            out.append(f"correct_ratio={self.correct_ratio}: expected a number in (0, 1)")
        if self.difficulty_range and (
            len(self.difficulty_range) != 2 or self.difficulty_range[0] > self.difficulty_range[1]
        ):
            out.append(f"difficulty_range={self.difficulty_range}: expected () or (lo, hi) with lo <= hi")
        for b in self.bins:
            if len(b) != 2 or b[0] > b[1]:
                out.append(f"bins={self.bins}: each bin must be an inclusive (lo, hi) with lo <= hi")
                break
        starts = [s for s, _ in self.schedule]
        if not starts or starts[0] != 0.0 or starts != sorted(starts):
            out.append(f"schedule starts {starts}: expected increasing fractions beginning at 0.0")
        for start, props in self.schedule:
            if len(props) != len(self.bins) or abs(sum(props) - 1.0) > 1e-6 or min(props) < 0:
                out.append(
                    f"schedule entry at {start}: proportions {props} must be {len(self.bins)} "
                    "non-negative numbers summing to 1"
                )
        return out


def allowed(index: RecordIndex, cfg: SamplingConfig) -> np.ndarray:
    """bool ``[N]``: records inside ``cfg.difficulty_range`` (all when it is empty)."""
    if not cfg.difficulty_range:
        return np.ones(len(index), bool)
    lo, hi = cfg.difficulty_range
    difficulty = index.difficulty()
    return (difficulty >= lo) & (difficulty <= hi)


def _permutation(rows: np.ndarray, seed: int, *stream: int) -> np.ndarray:
    return np.random.default_rng([seed, *stream]).permutation(rows)


class _EpochCursor:
    """Draws from ``rows`` in shuffled epochs: each row at most once per epoch of that pool."""

    def __init__(self, rows: np.ndarray, seed: int, stream: int):
        self.rows, self.seed, self.stream, self.epoch, self.order, self.pos = rows, seed, stream, 0, None, 0

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.order is None or self.pos == len(self.order):
                self.order, self.pos = _permutation(self.rows, self.seed, self.stream, self.epoch), 0
                self.epoch += 1
            k = min(n, len(self.order) - self.pos)
            out.append(self.order[self.pos : self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def _epochs(epoch_fn, num_samples: int) -> np.ndarray:
    chunks, total, epoch = [], 0, 0
    while total < num_samples:
        chunk = epoch_fn(epoch)
        chunks.append(chunk)
        total, epoch = total + len(chunk), epoch + 1
    return np.concatenate(chunks)[:num_samples]


def _balanced_size(n_correct: int, n_incorrect: int, ratio: float) -> int:
    return int(min(n_correct / ratio, n_incorrect / (1 - ratio)))


def balanced_epoch(
    index: RecordIndex,
    ratio: float,
    seed: int,
    epoch: int,
    repeat: bool,
    size: int | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    mask = np.ones(len(index), bool) if mask is None else mask
    correct = np.flatnonzero(index.is_correct & mask)
    incorrect = np.flatnonzero(~index.is_correct & mask)
    if not len(correct) or not len(incorrect):
        raise SamplingError(
            f"balanced sampling needs both classes; the index has {len(correct)} correct and "
            f"{len(incorrect)} incorrect records"
        )
    rng = np.random.default_rng([seed, 1, epoch])
    if size is None:
        size = _balanced_size(len(correct), len(incorrect), ratio)
    n_correct = int(round(size * ratio))
    n_incorrect = size - n_correct
    if not repeat and (n_correct > len(correct) or n_incorrect > len(incorrect)):
        raise SamplingError(
            f"balanced epoch of {size} at correct_ratio {ratio} needs {n_correct} correct and "
            f"{n_incorrect} incorrect records; the index has {len(correct)} and {len(incorrect)} "
            "(set repeat=True to allow repeats within an epoch)"
        )
    pick = [rng.choice(pool, n, replace=n > len(pool)) for pool, n in ((correct, n_correct), (incorrect, n_incorrect))]
    return rng.permutation(np.concatenate(pick))


def curriculum_plan(index: RecordIndex, cfg: SamplingConfig, num_samples: int, seed: int) -> np.ndarray:
    difficulty = index.difficulty()
    eligible = allowed(index, cfg) & (index.is_correct if cfg.curriculum_correct_only else True)
    pools = [np.flatnonzero(eligible & (difficulty >= lo) & (difficulty <= hi)) for lo, hi in cfg.bins]
    cursors = [_EpochCursor(pool, seed, 10 + b) for b, pool in enumerate(pools)]
    starts = [int(round(s * num_samples)) for s, _ in cfg.schedule] + [num_samples]
    out = []
    for (start, props), begin, end in zip(cfg.schedule, starts[:-1], starts[1:]):
        n = end - begin
        counts = np.floor(np.asarray(props) * n).astype(int)
        counts[int(np.argmax(props))] += n - counts.sum()  # rounding remainder to the largest bin
        for b, (count, pool) in enumerate(zip(counts, pools)):
            if count and not len(pool):
                sizes = {f"{lo}-{hi}": len(p) for (lo, hi), p in zip(cfg.bins, pools)}
                raise SamplingError(
                    f"curriculum phase from {start:.0%} wants {count} records of difficulty bin "
                    f"{cfg.bins[b]}, but it is empty (records per bin: {sizes})"
                )
        phase = np.concatenate([c.take(k) for c, k in zip(cursors, counts)])
        out.append(np.random.default_rng([seed, 2, begin]).permutation(phase))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _pair_problems(index: RecordIndex, mask: np.ndarray) -> list[np.ndarray]:
    """Allowed rows of each problem that has both a correct and an incorrect allowed record."""
    out = []
    for p in range(index.n_problems):
        rows = np.arange(index.problem_start[p], index.problem_start[p + 1])
        rows = rows[mask[rows]]
        if index.is_correct[rows].any() and not index.is_correct[rows].all():
            out.append(rows)
    return out


def pairs_epoch(index: RecordIndex, seed: int, epoch: int, mask: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng([seed, 3, epoch])
    correct = index.is_correct
    pairs = []
    for rows in _pair_problems(index, np.ones(len(index), bool) if mask is None else mask):
        pairs.append((rng.choice(rows[correct[rows]]), rng.choice(rows[~correct[rows]])))
    if not pairs:
        raise SamplingError(
            f"pair sampling needs problems with both correct and incorrect solutions; none of the "
            f"{index.n_problems} problems ({int(correct.sum())} correct, {int((~correct).sum())} "
            "incorrect records) has both"
        )
    pairs = np.asarray(pairs, np.int64)
    return pairs[rng.permutation(len(pairs))].ravel()


def build_plan(index: RecordIndex, cfg: SamplingConfig, num_samples: int, seed: int) -> np.ndarray:
    """int64 record rows for ``num_samples`` draws (the whole run), deterministic in ``seed``.

    Raises:
      SamplingError: the index cannot satisfy the strategy (counts in the message).
    """
    problems = cfg.problems()
    if problems:
        raise SamplingError("invalid sampling config: " + "; ".join(problems))
    mask = allowed(index, cfg)
    if cfg.strategy in ("correct", "all"):
        rows = np.flatnonzero(mask & index.is_correct if cfg.strategy == "correct" else mask)
        if not len(rows):
            raise SamplingError(
                f"strategy {cfg.strategy!r}: the index has no eligible record "
                f"({len(index)} records, {int(index.is_correct.sum())} correct, {int(mask.sum())} in "
                f"difficulty_range {cfg.difficulty_range or 'all'})"
            )
        return _epochs(lambda e: _permutation(rows, seed, 0, e), num_samples)
    if cfg.strategy == "balanced":
        return _epochs(lambda e: balanced_epoch(index, cfg.correct_ratio, seed, e, cfg.repeat, mask=mask), num_samples)
    if cfg.strategy == "pairs":
        return _epochs(lambda e: pairs_epoch(index, seed, e, mask), num_samples)
    return curriculum_plan(index, cfg, num_samples, seed)


def epoch_size(index: RecordIndex, cfg: SamplingConfig) -> int:
    """Draws in one epoch of ``cfg.strategy``: the eligible records ("correct", "all", "curriculum": every record
    of the bins), the largest balanced mix without repeats ("balanced"), two per problem with both classes
    ("pairs"); all within ``difficulty_range``."""
    mask = allowed(index, cfg)
    if cfg.strategy == "correct":
        return int((mask & index.is_correct).sum())
    if cfg.strategy == "balanced":
        return _balanced_size(
            int((mask & index.is_correct).sum()), int((mask & ~index.is_correct).sum()), cfg.correct_ratio
        )
    if cfg.strategy == "pairs":
        return 2 * len(_pair_problems(index, mask))
    if cfg.strategy == "curriculum":
        difficulty = index.difficulty()
        in_bins = np.zeros(len(index), bool)
        for lo, hi in cfg.bins:
            in_bins |= (difficulty >= lo) & (difficulty <= hi)
        return int((mask & in_bins & (index.is_correct if cfg.curriculum_correct_only else True)).sum())
    return int(mask.sum())


def shard_plan(plan: np.ndarray, global_batch: int, process_index: int, process_count: int) -> np.ndarray:
    """This process's rows: for every global batch, its contiguous ``global_batch / process_count`` slice.

    Shards of different processes are disjoint and together form each global batch in order.
    """
    if global_batch % process_count:
        raise SamplingError(f"global batch {global_batch} is not divisible by {process_count} processes")
    n_batches = len(plan) // global_batch
    local = global_batch // process_count
    return plan[: n_batches * global_batch].reshape(n_batches, process_count, local)[:, process_index].ravel()
