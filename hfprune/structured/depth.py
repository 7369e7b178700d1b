"""Depth and width in one budget (`structures: [layers, heads, neurons]`): how many whole layers to drop, and
which heads and neurons of the rest to keep.

Removing a layer of a pre-norm residual model is the same as zeroing every head and neuron gate of that layer
(the layer then adds nothing to the residual stream), so one candidate plan per depth can be scored by the same
masked forward pass that measures every plan: for d = 0, 1, 2, ... the d layers of least block importance
(ShortGPT's BI, `layers.block_importance`) are marked removed (their units' scores set to `GONE`, so the search
pays nothing for them and spends the whole budget on the rest), the heads and neurons of the other layers are
searched as usual, and the plan's KL divergence to the dense model on the probe batches is measured. The depth
with the lowest KL wins. Depths stop where the removed layers alone would cut more than the budget asks, or
once the KL has risen for `PATIENCE` depths in a row past the best one. Layers the chosen plan keeps no unit of
are removed whole as well. For models whose blocks carry biases
or norms after the residual add (post-norm BERT), gating approximates removal; the chosen plan is measured on
the real pruned model afterwards.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from ..cost.flops import ModelCount
from ..errors import RecipeError
from ..publish.report import PruningReport
from ..recipe import Recipe
from .agreement import agreement
from .balance import layer_of
from .criteria import Scores
from .layers import block_importance
from .search import GONE, Plan, search, unit_cost

PATIENCE = 3


def _without(scores: Scores, layers: set[str]) -> Scores:
    """`scores` with every unit of `layers` marked gone."""
    def drop(table: dict) -> dict:
        return {n: torch.full_like(s, GONE) if layer_of(n) in layers else s for n, s in table.items()}

    return replace(scores, heads=drop(scores.heads), neurons=drop(scores.neurons))


def _layer_costs(counts: ModelCount, metric: str) -> dict[str, float]:
    costs: dict[str, float] = {}
    for site in counts.sites.values():
        per_unit, per_kv = unit_cost(site, metric)
        cost = site.units * per_unit + site.kv_units * per_kv
        costs[layer_of(site.name)] = costs.get(layer_of(site.name), 0.0) + cost
    return costs


def choose_depth(model: nn.Module, recipe: Recipe, counts: ModelCount, scores: Scores, probe: list,
                 dense: list, report: PruningReport) -> tuple[list[str], Plan]:
    """The layers to remove and the plan for the rest, the pair of least KL to the dense model on `probe`.

    Args:
        model: the model, unmasked.
        recipe: the recipe (with `layers` among its structures).
        counts: the model's `ModelCount` (costed for the budget's metric).
        scores: unit scores of the model.
        probe, dense: the batches plans are compared on and the dense model's outputs on them.
        report: gets the block importances (`layer_scores`) and the KL of every depth tried (`depth_search`).
    """
    if not probe:
        raise RecipeError("structures: [layers] with heads/neurons needs calibration data to compare depths")
    importance = block_importance(model, probe)
    report.layer_scores = importance
    metric = recipe.target.metric
    to_cut = counts.total(metric) * (1 - recipe.target.get(metric)) if recipe.target.get(metric) else float("inf")
    costs = _layer_costs(counts, metric)
    stack_sizes: dict[str, int] = {}
    for layer in importance:
        stack_sizes[layer.split(".")[0]] = stack_sizes.get(layer.split(".")[0], 0) + 1
    candidates, removed, cut = [[]], [], 0.0
    for layer in sorted(importance, key=importance.get):
        stack = layer.split(".")[0]
        if not recipe.selects(layer):
            continue
        if sum(r.split(".")[0] == stack for r in removed) + 1 >= stack_sizes[stack]:
            continue  # a stack keeps at least one layer
        if cut + costs.get(layer, 0.0) > to_cut:
            break  # removing more than the budget asks for is never better than removing just enough
        removed, cut = [*removed, layer], cut + costs.get(layer, 0.0)
        candidates.append(removed)
    best: tuple[float, list[str], Plan] | None = None
    report.depth_search = {}
    for layers in candidates:
        try:
            plan = search(counts, _without(scores, set(layers)), recipe)
        except RecipeError:
            continue
        kl = agreement(model, plan, probe, dense)["kl"]
        report.depth_search[len(layers)] = kl
        if best is None or kl < best[0]:
            best = (kl, layers, plan)
        elif len(layers) - len(best[1]) >= PATIENCE:
            break
    if best is None:
        raise RecipeError(f"target {recipe.target.to_dict()} cannot be met at any depth")
    _, layers, plan = best
    return layers + _emptied(plan, counts, layers, stack_sizes), plan


def _emptied(plan: Plan, counts: ModelCount, removed: list[str], stack_sizes: dict[str, int]) -> list[str]:
    """Layers the plan keeps no unit of (the unit search may empty a layer itself): they go whole too, norms and
    all, as long as their stack keeps a layer."""
    kept: dict[str, int] = {}
    for name in counts.sites:
        table = plan.heads if name in plan.heads else plan.neurons if name in plan.neurons else None
        units = len(table[name]) if table is not None else counts.sites[name].units
        kept[layer_of(name)] = kept.get(layer_of(name), 0) + units
    emptied = []
    for layer, units in kept.items():
        stack = layer.split(".")[0]
        left = stack_sizes[stack] - sum(r.split(".")[0] == stack for r in removed + emptied)
        if units == 0 and layer not in removed and left > 1:
            emptied.append(layer)
    return emptied
