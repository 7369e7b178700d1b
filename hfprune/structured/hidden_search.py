"""Hidden size and width in one budget (`structures: [hidden, heads, neurons]`): how narrow the residual stream
gets, and which heads and neurons are kept at that width.

As `depth.py` does for depth, a few plans are compared on the real thing. Hidden sizes are tried from the full
width down to the widest that meets the target by itself (a narrower one would remove more than the budget asks),
evenly spaced in multiples of `round_hidden` and of what the family's config needs, at most
`recipe.hidden_candidates` of them. The residual channels are scored once, on the dense model (Minitron's norm
activations, `hidden.hidden_scores`), so every width keeps the top channels of one ranking. For each width a copy
of the model is narrowed, its heads and neurons are scored and searched under the same budget (the recipe's
fraction of the dense model, re-expressed as a fraction of the narrowed one), and the plan's KL to the dense model
on the probe batches is measured. The width of least KL wins: the model itself is narrowed to it, and its plan
goes on to refinement and surgery like any other.

Narrowing a copy rather than gating the stream keeps everything exact and reuses what exists: the costs of heads
and neurons (which scale with the hidden size) are `hfprune.count` of the narrowed model, and the criteria score
the model that will actually be pruned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..core.hidden import hidden_multiple, remove_hidden_channels, residual_stream
from ..cost.flops import ModelCount, count
from ..cost.hidden import HiddenCost, hidden_cost
from ..errors import RecipeError
from ..publish.report import PruningReport
from ..recipe import Recipe
from ..settings import Target
from .agreement import agreement
from .criteria import Scores, compute_scores
from .hidden import choose_width, hidden_scores
from .search import Plan, search


@dataclass
class HiddenChoice:
    """The hidden size chosen and what goes with it.

    Attributes:
        width: the kept hidden size.
        keep: the kept residual channels (indices in the dense model, ascending).
        counts: `hfprune.count` of the model narrowed to `width`, at the budget's lengths: what the plan's unit
            indices and costs refer to.
        scores: the unit scores of the narrowed model.
        plan: the heads and neurons to keep at that width.
        kl: the plan's mean KL per position to the dense model on the probe batches.
    """

    width: int
    keep: list[int]
    counts: ModelCount
    scores: Scores
    plan: Plan
    kl: float


def candidate_widths(cost: HiddenCost, recipe: Recipe, multiple: int = 1) -> list[int]:
    """The hidden sizes to try, widest first: the full width, then evenly spaced multiples of `recipe.round_hidden`
    and `multiple` down to the widest that meets the target alone (or the narrowest allowed, when none does), at
    most `recipe.hidden_candidates` in all.

    Example:
        ```python
        >>> candidate_widths(hidden_cost(model, counts), Recipe(target={"params": 0.5}, round_hidden=8))
        [32, 24, 16, 8]
        ```
    """
    step = math.lcm(recipe.round_hidden, multiple)
    try:
        narrowest = choose_width(cost, recipe, multiple)
    except RecipeError:
        narrowest = step  # the hidden size alone cannot meet it: heads and neurons make up the rest
    if narrowest >= cost.width:
        return [cost.width]
    last = recipe.hidden_candidates - 1
    widths = [cost.width]
    for index in range(1, last + 1):
        # `narrowest` is a multiple of `step`, so rounding down never goes below it.
        width = (narrowest + (last - index) * (cost.width - narrowest) // last) // step * step
        if width < widths[-1]:
            widths.append(width)
    return widths


def _rebudgeted(recipe: Recipe, budget: float, counts: ModelCount) -> Recipe:
    """`recipe` with its target re-expressed as a fraction of the model `counts` describes: the same absolute
    budget, so every width is held to the dense model's target."""
    metric = recipe.target.metric
    fraction = min(1.0, budget / counts.total(metric))
    return replace(recipe, target=Target(**{metric: fraction}))


def _narrowed(model: nn.Module, keep: list[int]) -> nn.Module:
    candidate = copy.deepcopy(model)
    remove_hidden_channels(candidate, keep=keep)
    return candidate


def _try_width(candidate: nn.Module, width: int, keep: list[int], recipe: Recipe, budget: float,
               counts: ModelCount, batches: list, probe: list, dense: list,
               report: PruningReport) -> HiddenChoice | None:
    """Score, search and measure one width; None when the budget cannot be met there (the minimums and what is
    not pruned already exceed it)."""
    with report.phase("scoring"):
        scores = compute_scores(candidate, recipe.criterion, batches)
    with report.phase("search"):
        try:
            plan = search(counts, scores, _rebudgeted(recipe, budget, counts))
        except RecipeError:
            return None
        kl = agreement(candidate, plan, probe, dense)["kl"]
    return HiddenChoice(width, keep, counts, scores, plan, kl)


def choose_hidden(model: nn.Module, recipe: Recipe, before: ModelCount, batches: list, probe: list,
                  dense: list, report: PruningReport) -> HiddenChoice:
    """Choose the hidden size and the heads and neurons to keep at it, the pair of least KL to the dense model on
    `probe`, and narrow `model` in place to that hidden size (its heads and neurons are left to the caller).

    Args:
        model: the model, unmasked and dense in its hidden size; narrowed in place.
        recipe: the recipe (with `hidden` and heads and/or neurons among its structures, a fraction target).
        before: the model's `ModelCount`, which the target is a fraction of.
        batches: calibration batches, on the model's device.
        probe, dense: the batches plans are compared on and the dense model's outputs on them.
        report: gets the KL of every width tried (`hidden_search`) and the hidden size before and after (`hidden`).

    Returns:
        `HiddenChoice`: the width, kept channels, counts, scores and plan of the winner.

    Raises:
        `RecipeError`: no width tried can meet the target.
        `PruningSpecError`: the family does not describe its residual stream (before anything is scored).
    """
    if not probe:
        raise RecipeError("structures: [hidden] with heads/neurons needs calibration data to compare hidden sizes")
    cost = hidden_cost(model, before)
    widths = candidate_widths(cost, recipe, hidden_multiple(model, residual_stream(model).spec))
    with report.phase("scoring"):
        channel_scores = hidden_scores(model, batches)
    # Ties go to the lower index, so the same model and data always keep the same channels.
    order = torch.argsort(-channel_scores, stable=True)
    metric = recipe.target.metric
    budget = recipe.target.get(metric) * before.total(metric)
    report.hidden_search = {}
    best: HiddenChoice | None = None
    for width in widths:
        keep = sorted(order[:width].tolist())
        if width == cost.width:
            candidate, counts = model, before
        else:
            with report.phase("surgery"):
                candidate = _narrowed(model, keep)
            counts = count(candidate, seq_len=before.seq_len, encoder_seq_len=before.encoder_seq_len)
        choice = _try_width(candidate, width, keep, recipe, budget, counts, batches, probe, dense, report)
        del candidate  # one narrowed copy at a time
        if choice is None:
            continue
        report.hidden_search[width] = choice.kl
        if best is None or choice.kl < best.kl:
            best = choice
    if best is None:
        raise RecipeError(f"target {recipe.target.to_dict()} cannot be met at any hidden size tried ({widths})")
    with report.phase("surgery"):
        remove_hidden_channels(model, keep=best.keep)
    report.hidden = [cost.width, best.width]
    return best
