"""Weight sparsity: single weights set to zero in the prunable linears, unstructured or N:M.

Which linears: those of the sites (attention q/k/v/o, FFN inputs and output), found through the adapters, so
embeddings, norms and task heads are never touched. Which weights, by criterion (registered by name):

- magnitude: |W|, over each layer or over all layers at once (`scope: global`). Needs no data.
- wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  S_ij = |W_ij| * ||X_j||_2, compared within each output row. No weight update.
- sparsegpt (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): an approximate OBS solve per layer that updates the kept weights (see `sparsegpt.py`).

Patterns: `unstructured`, or `N:M`: N zeros in every group of M consecutive inputs of a row (`2:4` is the
pattern sparse tensor cores run). Counts are exact: a layer at sparsity s has round(s * weights) zeros
(magnitude, sparsegpt), each row round(s * inputs) zeros (wanda), each group exactly N zeros (N:M).

Data-driven criteria run block by block (see `blockwise.py`): each transformer layer is calibrated on the
outputs of the already-pruned layers before it, and inside a layer group by group (`weights.sequential`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..calibration.batches import check_calibration
from ..core.linear import weight_out_in
from ..registry import WEIGHT_CRITERIA
from ..settings import WeightSettings
from .blockwise import prune_blockwise
from .criteria import prune_layer
from .selection import select_global
from .targets import check_widths, weight_sparsity, weight_targets


def sparsify(
    model: nn.Module, settings: WeightSettings | dict, calibration: Iterable[dict] | None = None
) -> dict[str, float]:
    """Set weights of the prunable linears of `model` to zero, in place.

    Args:
        model: any supported model (possibly already shrunk by structured pruning).
        settings: `WeightSettings` or a recipe's `weights` mapping.
        calibration: model-ready batches; needed by wanda and sparsegpt.

    Returns:
        Fraction of zeros per pruned linear (module path -> fraction).

    Example:
        ```python
        >>> from hfprune import sparsify
        >>> sparsify(model, {"criterion": "wanda", "pattern": "2:4"}, calibration=batches)
        ```
    """
    settings = WeightSettings.from_value(settings)
    targets = weight_targets(model)
    check_widths(targets, settings)
    statistic = WEIGHT_CRITERIA[settings.criterion].statistic
    needed_by = f"weights criterion {settings.criterion!r}" if statistic else None
    batches = check_calibration(calibration, needed_by)
    if settings.sparsity > 0:
        with torch.no_grad():
            if settings.scope == "global":
                views = [weight_out_in(t.module) for t in targets]
                for view, pruned in zip(views, select_global([v.abs() for v in views], settings.sparsity),
                                        strict=True):
                    view.masked_fill_(pruned, 0)
            elif statistic is None:
                for target in tqdm(targets, desc="weight sparsity", unit="layer", leave=False):
                    prune_layer(target, settings)
            else:
                prune_blockwise(model, targets, batches, statistic, lambda t, s: prune_layer(t, settings, s),
                                sequential=settings.sequential)
    names = {t.name for t in targets}
    return {name: value for name, value in weight_sparsity(model).items() if name in names}
