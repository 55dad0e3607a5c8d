"""``{workdir}/report.md``: one page per run, from the files the run left in its workdir.

Written at the end of every training run (``train.loop.standard_hooks``) and by an evaluation of a training
workdir (``eval.run.evaluate``), so the report always shows the newest evaluation:

- what ``final/`` is (``final/selection.json``: the last or the best step, LoRA merged or adapters, early stop);
- pass@k with 95% intervals per benchmark, with the dataset, protocol, samples, temperatures and outcomes
  (``eval/results.json``), or how to evaluate when the run was not evaluated;
- each head's teacher-forced CE of the benchmarks' reference solutions (``results.json["reference_ce"]``);
- the loss and validation curves (``metrics.jsonl``: first, lowest and last value, and ``curves.png``);
- the token-weight distribution (``weight_hist.json`` / ``weight_distribution.png``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wmtp_jax.files import atomic_write_text

CURVE_KEYS = ("loss", "val_loss")  # plus every per-head CE and validation metric found in metrics.jsonl


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def curves(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of ``metrics.jsonl`` for the loss, validation and per-head CE metrics; a
    step written twice (a resumed run) counts once, with its last row."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = {}
    for line in open(path):
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (json.JSONDecodeError, KeyError, ValueError):
            continue
    out: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(rows):
        for key, value in rows[step].items():
            wanted = key in CURVE_KEYS or key.startswith(("ce_head", "val/", "val_"))
            if wanted and isinstance(value, (int, float)) and np.isfinite(value):
                out.setdefault(key, []).append((step, float(value)))
    return out


def _plot_curves(series: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, label=key, marker="o" if len(points) < 20 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("nats (losses) / value")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _evaluation(results: dict | None, workdir: Path) -> list[str]:
    if not results or not results.get("benchmarks"):
        return [
            "Not evaluated (`train.eval_at_end=False`). Evaluate `final/` with",
            "",
            "```bash",
            f"uv run python -m wmtp_jax.main --config=configs/eval.py --config.model.checkpoint={workdir}/final \\",
            f"    --config.workdir={workdir}",
            "```",
            "",
        ]
    protocol = results.get("protocol", {})
    deviations = protocol.get("deviations") or {}
    lines = [
        f"Protocol `{protocol.get('name', '?')}`"
        + (f" with {', '.join(f'{k}={v}' for k, v in deviations.items())}" if deviations else "")
        + f"; sandbox: {results.get('sandbox_isolation', '?')}; devices: {results.get('devices', '?')}.",
        "",
    ]
    ks = sorted(
        {key for r in results["benchmarks"].values() for key in r if key.startswith("pass@")}, key=lambda k: int(k[5:])
    )
    lines += [
        "| benchmark | dataset | problems | samples | temperature | "
        + " | ".join(f"{k} (95% CI)" for k in ks)
        + " | outcomes | timeouts re-run / changed |",
        "|---|---|---:|---:|---|" + "---|" * len(ks) + "---|---|",
    ]
    rows = []
    for name, r in results["benchmarks"].items():  # HumanEval+ / MBPP+: plus (base and plus inputs), then base
        rows += [(name, r)] if "base" not in r else [(f"{name} (plus)", r), (f"{name} (base)", {**r, **r["base"]})]
    for name, r in rows:
        temps = r.get("k_temperatures") or [r.get("temperature")]
        cells = [f"{r[k]['mean']:.3f} [{r[k]['ci95'][0]:.3f}, {r[k]['ci95'][1]:.3f}]" if k in r else "—" for k in ks]
        outcomes = ", ".join(f"{s} {n}" for s, n in r.get("outcomes", {}).items() if n)
        reruns = r.get("timeout_reruns", {})
        lines.append(
            f"| {name} | {r.get('dataset', '')} | {r.get('problems')} | {r.get('n_samples')} | "
            f"{'/'.join(str(t) for t in dict.fromkeys(temps))} | "
            + " | ".join(cells)
            + f" | {outcomes} | {reruns.get('rerun', 0)} / {reruns.get('changed', 0)} |"
        )
    lines.append("")
    ref = results.get("reference_ce") or {}
    if ref:
        lines += [
            "Teacher-forced CE of the benchmarks' reference solutions (nats per token, per head):",
            "",
            "| metric | value |",
            "|---|---:|",
            *[f"| {key} | {value:.4f} |" for key, value in sorted(ref.items())],
            "",
        ]
    return lines


def write_run_report(workdir: str | Path, title: str = "") -> Path:
    """Writes ``{workdir}/report.md`` (and ``curves.png`` when the run logged metrics) from the run's files;
    returns the report's path. Missing files are stated in the report, never an error."""
    workdir = Path(workdir)
    selection = _read_json(workdir / "final" / "selection.json")
    results = _read_json(workdir / "eval" / "results.json")
    lines = [f"# {title or 'Run report: ' + workdir.name}", ""]
    lines += ["## final/", ""]
    if selection:
        what = f"the {selection.get('final', 'last')} state, step {selection.get('step')}"
        if selection.get("final") == "best":
            what += f" (best {selection.get('metric')} = {selection.get('value')})"
        extra = [f"LoRA {selection['lora']}"] if selection.get("lora") else []
        extra += [f"early stopped: {selection['early_stopped']}"] if selection.get("early_stopped") else []
        extra += ["co-trained critic in final/critic"] if selection.get("critic") else []
        lines += [f"`final/` holds {what}" + (f"; {'; '.join(extra)}" if extra else "") + ".", ""]
    elif results:
        lines += [f"An evaluation-only workdir: the model evaluated is {results.get('model', '?')}.", ""]
    else:
        lines += ["No `final/selection.json`: the run has not finished (or wrote no final model).", ""]
    lines += ["## Evaluation", "", *_evaluation(results, workdir)]
    series = curves(workdir)
    lines += ["## Curves", ""]
    if series:
        lines += ["| metric | first (step) | lowest (step) | last (step) |", "|---|---|---|---|"]
        for key, points in series.items():
            low = min(points, key=lambda p: p[1])
            cell = lambda p: f"{p[1]:.4f} ({p[0]})"
            lines.append(f"| {key} | {cell(points[0])} | {cell(low)} | {cell(points[-1])} |")
        _plot_curves(series, workdir / "curves.png")
        lines += ["", "![curves](curves.png)", ""]
    else:
        lines += ["No `metrics.jsonl`.", ""]
    hist = _read_json(workdir / "weight_hist.json")
    lines += ["## Token weights", ""]
    if hist and sum(hist.get("counts", [])):
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        mean = float((centres * counts).sum() / counts.sum())
        cdf = np.cumsum(counts) / counts.sum()
        bins = {p: int(np.searchsorted(cdf, p)) for p in (0.5, 0.9, 0.99)}  # the bin holding each quantile
        where = {p: f"[{edges[i]:.3f}, {edges[i + 1]:.3f})" for p, i in bins.items()}
        lines += [
            f"Weights of valid targets over the run (histogram of {len(counts)} bins over [0, {edges[-1]:.0f}]; "
            f"larger weights are not counted): mean ≈ {mean:.3f} (bin centres); the median lies in {where[0.5]}, "
            f"the 90th percentile in {where[0.9]}, the 99th in {where[0.99]}.",
            "",
        ]
        if (workdir / "weight_distribution.png").is_file():
            lines += ["![token weights](weight_distribution.png)", ""]
    else:
        lines += ["No weight histogram (the run has not finished).", ""]
    path = workdir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
