"""The files `q3tts eval` writes: results.json (rows, aggregates, notes), results.csv (one row per
model and item), report.md (a table of the aggregates per model) and distributions.png (one panel
per metric, one box per model side by side)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .errors import require

# The metrics that are aggregated and plotted, with the direction that is better.
METRICS = {
    "wer": "lower", "cer": "lower", "speaker_similarity": "higher", "words_per_second": "-",
    "rate_ratio": "near 1", "seconds_per_character": "-", "silence_ratio": "lower", "clipping_ratio": "lower",
    "loudness_lufs": "-", "drift_min_similarity": "higher",
    "mel_distance": "lower", "si_snr_db": "higher", "stoi": "higher", "pesq": "higher",  # codec round trip
}  # fmt: skip
FLAGS = ("runaway", "early_stop")


def _numbers(rows: list[dict], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def aggregate(rows: list[dict]) -> dict:
    """{model: {metric: {mean, median, min, max, n}, flag: count, items: n}}."""
    result: dict = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        summary: dict = {"items": len(mine)}
        for key in METRICS:
            values = _numbers(mine, key)
            if values:
                summary[key] = dict(mean=float(np.mean(values)), median=float(np.median(values)),
                                    min=min(values), max=max(values), n=len(values))  # fmt: skip
        for flag in FLAGS:
            summary[flag] = sum(bool(r.get(flag)) for r in mine)
        summary["drifted"] = sum(bool(r.get("drift_flagged")) for r in mine)
        result[model] = summary
    return result


def write_json(path: Path, rows: list[dict], summary: dict, notes: list[str]) -> None:
    path.write_text(json.dumps({"aggregate": summary, "items": rows, "notes": notes}, indent=2, allow_nan=False,
                               default=str) + "\n", encoding="utf-8")  # fmt: skip


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, summary: dict, notes: list[str], plot: str | None) -> None:
    models = list(summary)
    keys = [k for k in METRICS if any(k in summary[m] for m in models)]
    lines = ["# q3tts eval report", "", "| metric (better) | " + " | ".join(models) + " |",
             "|---|" + "---|" * len(models)]  # fmt: skip
    lines.append("| items | " + " | ".join(str(summary[m]["items"]) for m in models) + " |")
    for k in keys:
        cells = [f"{summary[m][k]['mean']:.3f}" if k in summary[m] else "-" for m in models]
        lines.append(f"| {k} ({METRICS[k]}) | " + " | ".join(cells) + " |")
    for flag in (*FLAGS, "drifted"):
        lines.append(f"| {flag} (items) | " + " | ".join(str(summary[m][flag]) for m in models) + " |")
    lines += ["", "Means over the items; results.csv has every item, results.json the medians and ranges."]
    if plot:
        lines += ["", f"![distributions]({plot})"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(path: Path, rows: list[dict]) -> bool:
    """One panel per metric with values, one box (and its points) per model; False if nothing to plot."""
    require("matplotlib", "matplotlib", "the report's plots")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or CI
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = [k for k in METRICS if _numbers(rows, k)]
    if not keys:
        return False
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        data = [_numbers([r for r in rows if r["model"] == m], key) for m in models]
        shown = [(m, d) for m, d in zip(models, data) if d]
        ax.boxplot([d for _, d in shown], widths=0.5)
        for i, (_, d) in enumerate(shown, 1):
            ax.scatter(np.full(len(d), i) + np.linspace(-0.08, 0.08, len(d)), d, s=12, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(shown) + 1), [m[:24] for m, _ in shown], fontsize=8)
        ax.set_title(f"{key} ({METRICS[key]} is better)" if METRICS[key] != "-" else key, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(out_dir: Path, rows: list[dict], notes: list[str]) -> dict:
    """All four files into `out_dir`; returns {kind: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "markdown": out_dir / "report.md",
             "png": out_dir / "distributions.png"}  # fmt: skip
    plotted = write_plot(paths["png"], rows)
    if not plotted:
        del paths["png"]
    write_json(paths["json"], rows, summary, notes)
    write_csv(paths["csv"], rows)
    write_markdown(paths["markdown"], summary, notes, paths["png"].name if plotted else None)
    return paths
