"""What the benchmarks share to report: the header line (machine, versions, command, wall time), the markdown +
JSON writer, and the accuracy-vs-FLOPs plot of the fortunes benchmarks."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import hfprune


def plot_accuracy(
    rows: list[dict], path: Path, title: str = "all-MiniLM-L6-v2 on fortunes topics, pruned without retraining"
) -> None:
    """Test accuracy against the fraction of FLOPs kept, one line per method (Torch-Pruning dashed), dense as a
    horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows[1:]):
        points = sorted((r["flops_kept"], r["accuracy"] * 100) for r in rows if r["method"] == method)
        style = "--s" if method.startswith("tp-") else "-o"
        axis.plot(*zip(*points, strict=True), style, label=method, markersize=4)
    axis.axhline(rows[0]["accuracy"] * 100, color="black", linewidth=0.8, label="dense")
    axis.set_xlabel("fraction of attention + FFN FLOPs kept")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.invert_xaxis()
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run_header(script: str, start: float) -> str:
    """One line naming the machine, the versions, the command and its wall time."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, hfprune {hfprune.__version__}. "
            f"Command: `python -m scripts.benchmarks.{Path(script).stem} {' '.join(sys.argv[1:])}`. "
            f"Took {time.perf_counter() - start:.0f} s.")


def write_report(out_dir: str | Path, stem: str, text: str, payload) -> Path:
    """Write `text` to `out_dir/stem.md` and `payload` to `out_dir/stem.json`, print `text`; returns
    `out_dir/stem` (for the plot beside them)."""
    path = Path(out_dir) / stem
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text(text + "\n")
    path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    print(text)
    return path
