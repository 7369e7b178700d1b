"""A PNG of what pruning kept in every layer: heads and FFN neurons, as a fraction of the dense layer's."""

from __future__ import annotations

import os
from pathlib import Path

from .summary import PruningSummary

_COLOURS = {"attention": "#4c72b0", "cross_attention": "#8172b2", "ffn": "#dd8452"}
_LABELS = {"attention": "attention heads", "cross_attention": "cross-attention heads", "ffn": "FFN neurons"}


def plot_kept(summary: PruningSummary, path: str | os.PathLike) -> Path:
    """Draw the kept fraction of heads and neurons per layer as grouped bars, one group per layer.

    Where the dense size of a site is not known, its bar shows the count kept instead, and the axis says so.

    Args:
        summary: from `hfprune.publish.summary.summarize`.
        path: where to write the PNG.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (`pip install matplotlib`).
    """
    # The figure is drawn on an Agg canvas of its own: no pyplot state, no display needed, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = summary.per_layer()
    kinds = [k for k in _LABELS if any(k in sites for sites in layers.values())]
    fractions = all(before for before, _ in summary.kept.values())  # None (unknown) or 0 (no dense size)
    figure = Figure(figsize=(max(6.0, 0.45 * len(layers) * max(1, len(kinds))), 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(kinds))
    for k, kind in enumerate(kinds):
        xs, ys = [], []
        for x, sites in enumerate(layers.values()):
            if kind in sites:
                before, after = sites[kind]
                xs.append(x + (k - (len(kinds) - 1) / 2) * width)
                ys.append(after / before if fractions else after)
        axes.bar(xs, ys, width=width, color=_COLOURS[kind], label=_LABELS[kind])
    crowded = len(layers) > 8
    axes.set_xticks(range(len(layers)), list(layers), rotation=60 if crowded else 0,
                    ha="right" if crowded else "center")
    if fractions:
        axes.set_ylim(0, 1.05)
        axes.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
        axes.set_ylabel("fraction kept")
    else:
        axes.set_ylabel("units kept (dense size unknown)")
    axes.set_title(f"{summary.model_class}: kept per layer")
    # Below the axes, so it never hides a bar.
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12 if not crowded else -0.3),
                ncol=len(kinds), frameon=False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
