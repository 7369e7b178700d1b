"""Hidden-size pruning for one-shot pruning (`structures: [hidden]`), as NVIDIA Minitron prunes width
(Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation").

A residual channel's importance is the magnitude of what every norm over the hidden size outputs in it,
averaged over the calibration tokens and summed over the norms (Minitron's embedding-channel score from
LayerNorm activations). The kept hidden size is the largest that meets the budget, rounded down to a multiple of
`round_hidden` (and of whatever the family's config needs, `HiddenSpec.multiple_of_field`); the channels of
highest importance stay, in their original order.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..calibration.capture import model_inputs
from ..core.hidden import hidden_multiple, remove_hidden_channels, residual_stream
from ..cost.flops import ModelCount
from ..cost.hidden import HiddenCost, hidden_cost
from ..errors import RecipeError
from ..publish.report import PruningReport
from ..recipe import Recipe


@torch.no_grad()
def hidden_scores(model: nn.Module, batches: list) -> torch.Tensor:
    """Importance of each residual channel: sum over the hidden-size norms of the mean |output| per token.

    Padding tokens (where a batch has a 2D `attention_mask` matching the norm's output) are left out. The hooks
    are removed even when a forward pass fails.

    Args:
        model: any model whose family describes its residual stream.
        batches: calibration batches, on the model's device.

    Returns:
        `torch.Tensor` of shape `(hidden_size,)`, float64 on the CPU.
    """
    stream = residual_stream(model)
    width = stream.width
    sums = [torch.zeros(width, dtype=torch.float64) for _ in stream.norms]
    tokens = [0.0 for _ in stream.norms]
    current: dict = {"mask": None}

    def hook(index: int):
        def record(module, args, output):
            values = output.detach().abs().to(torch.float64).reshape(-1, width)
            mask = current["mask"]
            if mask is not None and mask.numel() == values.shape[0]:
                weights = mask.reshape(-1, 1).to(values.dtype)
                values = values * weights
                count = float(weights.sum())
            else:
                count = float(values.shape[0])
            sums[index] += values.sum(0).cpu()
            tokens[index] += count

        return record

    handles = [norm.register_forward_hook(hook(i)) for i, norm in enumerate(stream.norms)]
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            current["mask"] = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
            model(**model_inputs(model, batch))
    finally:
        for handle in handles:
            handle.remove()
    return sum(total / max(count, 1.0) for total, count in zip(sums, tokens, strict=True))


def choose_width(cost: HiddenCost, recipe: Recipe, multiple: int = 1) -> int:
    """The largest hidden size that meets `recipe.target`: the current one when it already fits, else a multiple
    of `recipe.round_hidden` and of `multiple` (what the family's config needs).

    Raises:
        `RecipeError`: not even the narrowest allowed size meets the target.
    """
    metric = recipe.target.metric
    budget = recipe.target.get(metric) * cost.counts.total(metric)
    if cost.total(metric, cost.width) <= budget:
        return cost.width
    step = math.lcm(recipe.round_hidden, multiple)
    per_channel = cost.per_channel(metric)
    fixed = cost.total(metric, 0)
    fits = int((budget - fixed) // per_channel) if per_channel > 0 else cost.width
    width = min(fits, cost.width - 1) // step * step
    if width < step:
        needs = f"round_hidden {recipe.round_hidden}" + (f" and the config's {multiple}" if multiple > 1 else "")
        narrowest = cost.total(metric, min(step, cost.width)) / cost.counts.total(metric)
        raise RecipeError(
            f"target.{metric}={recipe.target.get(metric)} cannot be met by hidden-size pruning: the narrowest "
            f"hidden size allowed ({step}, a multiple of {needs}) keeps {narrowest:.1%} of the {metric}, "
            f"and the part the hidden size does not scale keeps {fixed / cost.counts.total(metric):.1%}"
        )
    return width


def prune_hidden(model: nn.Module, recipe: Recipe, batches: list, before: ModelCount, report: PruningReport) -> None:
    """Narrow the hidden size of `model` in place to `recipe.target`, keeping the channels of highest importance.

    Args:
        model: the model to prune in place.
        recipe: a `Recipe` with `structures: [hidden]` and a flops, params or nonembedding_params target.
        batches: calibration batches, on the model's device.
        before: the model's `ModelCount`, which the target is a fraction of.
        report: gets the phase times and `hidden` (hidden size before and after).
    """
    cost = hidden_cost(model, before)
    width = choose_width(cost, recipe, hidden_multiple(model, residual_stream(model).spec))  # refused before scoring
    with report.phase("scoring"):
        scores = hidden_scores(model, batches)
    # Ties go to the lower index, so the same model and data always keep the same channels.
    order = torch.argsort(-scores, stable=True)
    keep = sorted(order[:width].tolist())
    with report.phase("surgery"):
        remove_hidden_channels(model, keep=keep)
    report.hidden = [cost.width, width]
