"""The study report: per arm and benchmark pass@k with its interval, every arm against the baseline arm with
paired statistics, training curves, weight distributions and per-head reference CE — as ``report.md``, PNG figures
and ``summary.json`` (schema in the README, "Running a study").

Inputs are finished workdirs: a training run with ``eval/`` (``train.eval_at_end``) or an eval job's workdir. An
arm is one or more workdirs (its seeds), pooled per problem (``stats.pool``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from wmtp_jax.eval.metrics import mean_pass_at_k
from wmtp_jax.files import atomic_write_text
from wmtp_jax.study.stats import Counts, compare, pool


class ReportError(ValueError):
    """A workdir that cannot be reported on; the message names it and what is missing."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """An arm of a study: its ``name`` and the workdirs of its seeds."""

    name: str
    workdirs: tuple[Path, ...]


def _eval_dir(workdir: Path) -> Path:
    for candidate in (workdir / "eval", workdir):
        if (candidate / "results.json").is_file() and (candidate / "samples.jsonl").is_file():
            return candidate
    raise ReportError(
        f"{workdir}: no eval/results.json + samples.jsonl (finish the run with train.eval_at_end=True "
        "or evaluate it with configs/eval.py and --config.workdir pointing at it)"
    )


def load_counts(workdir: Path) -> tuple[dict[str, dict[str, tuple[int, int]]], dict]:
    """``({benchmark: {task_id: (n samples, n passed)}}, results.json)`` of one finished run. Under a protocol
    with several temperatures only the samples drawn at the first one (pass@1's) count, so a problem's pass
    rate is that of one sampling distribution. HumanEval+ / MBPP+ give two benchmarks: ``name`` (plus: base and
    plus inputs) and ``name/base``."""
    directory = _eval_dir(Path(workdir))
    results = json.loads((directory / "results.json").read_text())
    first = {name: r.get("temperature") for name, r in results.get("benchmarks", {}).items()}
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for i, line in enumerate(open(directory / "samples.jsonl"), 1):
        try:
            row = json.loads(line)
            if "temperature" in row and row["temperature"] != first.get(row["benchmark"], row["temperature"]):
                continue
            entry = counts[row["benchmark"]][str(row["task_id"])]
            entry[0] += 1
            entry[1] += row["status"] == "passed"
            if "base_status" in row:  # HumanEval+ / MBPP+: "status" is plus; base is compared as its own benchmark
                entry = counts[row["benchmark"] + "/base"][str(row["task_id"])]
                entry[0] += 1
                entry[1] += row["base_status"] == "passed"
        except (json.JSONDecodeError, KeyError) as e:
            raise ReportError(f"{directory / 'samples.jsonl'}:{i}: not a sample row ({e})") from None
    return {b: {t: (n, c) for t, (n, c) in tasks.items()} for b, tasks in counts.items()}, results


def _curves(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per metric (loss, per-head CE, validation metrics), ``[(step, value), ...]`` from the run's metrics.jsonl;
    a step written twice (a resumed run) counts once, with its last row."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = {}
    for line in open(path):
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run rewrites the steps after its checkpoint
    for step in sorted(rows):
        for key, value in rows[step].items():
            if key.startswith(("loss", "ce_head_", "val_loss", "val/")) and isinstance(value, (int, float)):
                out[key].append((step, float(value)))
    return out


def build(
    arms: list[Arm],
    baseline: str,
    out_dir: Path,
    *,
    ks: tuple[int, ...] | None = None,
    bootstrap: int = 1000,
    flips: int = 10_000,
    seed: int = 0,
    title: str = "Study report",
) -> dict:
    """Writes ``summary.json``, ``report.md`` and figures into ``out_dir``; returns the summary.

    Raises ReportError when the baseline arm is missing, a workdir has no evaluation, or arms evaluated
    different benchmarks.
    """
    names = [a.name for a in arms]
    if baseline not in names:
        raise ReportError(f"baseline arm {baseline!r} is not among the arms {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled: dict[str, dict[str, dict[str, Counts]]] = {}
    settings: dict[str, dict] = {}
    ref_ce: dict[str, dict] = {}
    for arm in arms:
        runs = [load_counts(w) for w in arm.workdirs]
        benchmarks = {b for counts, _ in runs for b in counts}
        pooled[arm.name] = {b: pool([counts[b] for counts, _ in runs]) for b in sorted(benchmarks)}
        settings[arm.name] = {
            b: {
                key: runs[0][1]["benchmarks"][b.removesuffix("/base")].get(key)
                for key in ("n_samples", "temperature", "limit", "prompt_format", "dataset")
            }
            | {"split": runs[0][1].get("split", "test")}
            for b in benchmarks
        }
        ref_ce[arm.name] = runs[0][1].get("reference_ce", {})
    benchmarks = sorted(pooled[baseline])
    for name in names:
        if sorted(pooled[name]) != benchmarks:
            raise ReportError(f"arm {name!r} evaluated {sorted(pooled[name])}, the baseline {benchmarks}")

    summary = {
        "baseline": baseline,
        "arms": {},
        "comparisons": {},
        "method": {
            "unit": "problem",
            "pooling": "samples of all seeds of an arm added up per problem",
            "interval": f"paired bootstrap over problems, {bootstrap} resamples, percentile 95%",
            "p_value": f"two-sided sign-flip test (exact up to 16 non-zero differences, else {flips} "
            "random sign patterns)",
            "seed": seed,
        },
    }
    for name in names:
        summary["arms"][name] = {
            "seeds": [str(w) for w in next(a for a in arms if a.name == name).workdirs],
            "benchmarks": {},
            "reference_ce": ref_ce[name],
        }
        for b in benchmarks:
            counts = pooled[name][b]
            tasks = sorted(counts)
            n, c = [counts[t].n for t in tasks], [counts[t].c for t in tasks]
            entry = {"n_problems": len(tasks), "samples_per_problem": min(n), **settings[name][b]}
            for k in ks or _ks(min(n)):
                mean, (lo, hi) = mean_pass_at_k(n, c, k, bootstrap=bootstrap, seed=seed)
                entry[f"pass@{k}"] = {"value": mean, "ci95": [lo, hi]}
            summary["arms"][name]["benchmarks"][b] = entry
        if name == baseline:
            continue
        summary["comparisons"][name] = {}
        for b in benchmarks:
            k_values = ks or _ks(
                min(min(x.n for x in pooled[name][b].values()), min(x.n for x in pooled[baseline][b].values()))
            )
            summary["comparisons"][name][b] = {
                f"pass@{k}": compare(
                    pooled[name][b], pooled[baseline][b], k, resamples=bootstrap, flips=flips, seed=seed
                ).to_json()
                for k in k_values
            }
    curves = {a.name: _curves(a.workdirs[0]) for a in arms}
    figures = _figures(summary, curves, arms, out_dir)
    summary["figures"] = figures
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(summary, title))
    return summary


def _ks(n_min: int) -> tuple[int, ...]:
    return tuple(k for k in (1, 10, 100) if k <= n_min)


def _fmt(x: float) -> str:
    return f"{x:+.3f}" if x else "0.000"


def markdown(summary: dict, title: str = "Study report") -> str:
    """The report as Markdown: the method, a pass@k table per benchmark and the paired comparisons."""
    baseline, lines = summary["baseline"], [f"# {title}", ""]
    m = summary["method"]
    lines += [
        f"Unit of analysis: the {m['unit']}; seeds pooled: {m['pooling']}. Interval: {m['interval']}. "
        f"p-value: {m['p_value']}. Baseline arm: `{baseline}`.",
        "",
    ]
    benchmarks = sorted(next(iter(summary["arms"].values()))["benchmarks"])
    for b in benchmarks:
        first = summary["arms"][baseline]["benchmarks"][b]
        lines += [
            f"## {b}",
            "",
            f"{first['n_problems']} problems of {first.get('dataset') or 'split ' + repr(first['split'])}, temperature "
            f"{first['temperature']}, samples per problem (pooled over seeds): "
            + ", ".join(
                f"{name} {arm['benchmarks'][b]['samples_per_problem']}" for name, arm in summary["arms"].items()
            )
            + ".",
            "",
        ]
        ks = [key for key in first if key.startswith("pass@")]
        lines += [
            "| arm | seeds | " + " | ".join(f"{k} (95% CI)" for k in ks) + " | Δ vs baseline (95% CI) | p |",
            "|---|---|" + "---|" * len(ks) + "---|---|",
        ]
        for name, arm in summary["arms"].items():
            e = arm["benchmarks"][b]
            cells = [f"{e[k]['value']:.3f} [{e[k]['ci95'][0]:.3f}, {e[k]['ci95'][1]:.3f}]" for k in ks]
            if name == baseline:
                diff, p = "—", "—"
            else:
                c = summary["comparisons"][name][b][ks[0]]
                diff = f"{_fmt(c['difference'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]"
                p = f"{c['p_value']:.3g} ({c['test']})"
            lines.append(f"| `{name}` | {len(arm['seeds'])} | " + " | ".join(cells) + f" | {diff} | {p} |")
        lines.append("")
    ref = {name: arm["reference_ce"] for name, arm in summary["arms"].items() if arm["reference_ce"]}
    if ref:
        keys = sorted({k for r in ref.values() for k in r})
        lines += [
            "## Per-head CE of the benchmarks' reference solutions (nats, teacher-forced)",
            "",
            "| arm | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        lines += [
            f"| `{name}` | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys) + " |"
            for name, r in ref.items()
        ]
        lines.append("")
    for fig in summary.get("figures", []):
        lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines)


def _figures(summary: dict, curves: dict, arms: list[Arm], out_dir: Path) -> list[str]:
    """pass@k bars with intervals, validation / training curves, and the arms' weight distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(summary["arms"])
    benchmarks = sorted(summary["arms"][names[0]]["benchmarks"])
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(4 + 2 * len(names), 3.5), squeeze=False)
    for ax, b in zip(axes[0], benchmarks):
        entries = [summary["arms"][n]["benchmarks"][b] for n in names]
        k = next(key for key in entries[0] if key.startswith("pass@"))
        means = np.array([e[k]["value"] for e in entries])
        err = np.array([[e[k]["value"] - e[k]["ci95"][0], e[k]["ci95"][1] - e[k]["value"]] for e in entries]).T
        ax.bar(range(len(names)), means, yerr=err, capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(f"{k} (95% CI)")
        ax.set_title(b)
    fig.tight_layout()
    fig.savefig(out_dir / "pass_at_k.png", dpi=100)
    plt.close(fig)
    written.append("pass_at_k.png")

    keys = [k for k in ("val_loss", "loss") if any(k in c for c in curves.values())]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for name, c in curves.items():
                if key in c:
                    steps, values = zip(*c[key])
                    ax.plot(steps, values, label=name, marker="." if key == "val_loss" else None)
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "curves.png", dpi=100)
        plt.close(fig)
        written.append("curves.png")

    hists = {
        a.name: json.loads((a.workdirs[0] / "weight_hist.json").read_text())
        for a in arms
        if (a.workdirs[0] / "weight_hist.json").is_file()
    }
    if hists:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, h in hists.items():
            counts = np.asarray(h["counts"], np.float64)
            if counts.sum():
                ax.step(h["edges"][:-1], counts / counts.sum(), where="post", label=name)
        ax.set_xlabel("token weight")
        ax.set_ylabel("share of target tokens")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "weights.png", dpi=100)
        plt.close(fig)
        written.append("weights.png")
    return written
