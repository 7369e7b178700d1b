"""Weight-sparsity criteria, registered by name (`weights: {criterion: name}` in a recipe), and the pruning of
one linear by one of them.

- magnitude: |W|, over each layer or over all layers at once (`scope: global`). Needs no data.
- wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  S_ij = |W_ij| * ||X_j||_2, compared within each output row. No weight update.
- sparsegpt (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): an approximate OBS solve per layer that updates the kept weights (see `sparsegpt.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.linear import weight_out_in
from ..registry import WEIGHT_CRITERIA
from ..settings import WeightSettings
from .selection import select
from .sparsegpt import sparsegpt_prune
from .targets import Target


@dataclass(frozen=True)
class WeightCriterion:
    """How a criterion prunes one layer.

    Attributes:
        prune: `prune(weight, statistic, settings) -> pruned mask`. `weight` is a float32 `(out, in)` copy that
            the criterion may update in place (SparseGPT); the caller zeroes the mask and writes it back.
        statistic: what it needs from the layer's inputs: None, `"norms"` (||X_j||_2 per input) or `"hessian"`
            (2 X X^T / tokens).
    """

    prune: Callable[[torch.Tensor, torch.Tensor | None, WeightSettings], torch.Tensor]
    statistic: str | None


def register_weight_criterion(name: str, statistic: str | None = None):
    """Register a weight-sparsity criterion, so a recipe's `weights: {criterion: name}` finds it."""

    def decorator(function):
        WEIGHT_CRITERIA.register(name, WeightCriterion(function, statistic))
        return function

    return decorator


@register_weight_criterion("magnitude")
def _magnitude(weight: torch.Tensor, statistic, settings: WeightSettings) -> torch.Tensor:
    return select(weight.abs(), settings, per_row=False)


@register_weight_criterion("wanda", statistic="norms")
def _wanda(weight: torch.Tensor, norms: torch.Tensor, settings: WeightSettings) -> torch.Tensor:
    # Rows are compared separately: Sun et al. show per-output groups matter for LLMs (outlier input features
    # would otherwise empty whole rows).
    return select(weight.abs() * norms[None, :], settings, per_row=True)


@register_weight_criterion("sparsegpt", statistic="hessian")
def _sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, settings: WeightSettings) -> torch.Tensor:
    return sparsegpt_prune(weight, hessian, settings.sparsity, settings.n_m, settings.block_size)


@torch.no_grad()
def prune_layer(target: Target, settings: WeightSettings, statistic: torch.Tensor | None = None) -> None:
    """Prune one linear in place with `settings.criterion`, keeping its dtype and device."""
    view = weight_out_in(target.module)
    weight = view.detach().float().clone()
    pruned = WEIGHT_CRITERIA[settings.criterion].prune(weight, statistic, settings)
    view.copy_(weight.masked_fill_(pruned, 0).to(view.dtype))
