"""Layer dropping for one-shot pruning (`structures: [layers]`): whole transformer layers scored by block
importance, BI = 1 - E[cos(x_in, x_out)] (ShortGPT, Men et al. 2024), and removed from the least important up,
until the model fits a FLOPs or params budget. A layer whose output barely turns its input contributes little."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core import find_stacks
from ..core.surgery import remove_layers
from ..cost.flops import ModelCount
from ..errors import RecipeError
from ..publish.report import PruningReport
from ..recipe import Recipe


@torch.no_grad()
def prune_layers(model: nn.Module, recipe: Recipe, batches: list, before: ModelCount, report: PruningReport) -> None:
    """Remove whole layers of `model` to `recipe.target`, least important first.

    Args:
        model: the model to prune in place.
        recipe: a `Recipe` with a `flops` or `params` target.
        batches: calibration batches, on the model's device.
        before: the dense model's `ModelCount`, which the target is a fraction of.
        report: the `PruningReport` that gets the phase times and `layer_scores`.
    """
    check_layer_target(recipe)
    with report.phase("scoring"):
        importance = block_importance(model, batches)
    removed = choose_layers(importance, before, recipe)
    report.layer_scores = importance
    with report.phase("surgery"):
        remove_layers(model, removed)


def check_layer_target(recipe: Recipe) -> None:
    """Refuse a target that whole layers cannot be counted against, before anything is scored."""
    if recipe.target.metric not in ("flops", "params", "nonembedding_params"):
        raise RecipeError("structures: [layers] needs a flops, params or nonembedding_params target")


def choose_layers(importance: dict[str, float], before: ModelCount, recipe: Recipe) -> list[str]:
    """The layers to remove (`"<stack>.<index>"`), least important first, until what is left fits the budget.

    Only layers that `recipe.sites` selects are candidates (`sites: [decoder]` thins the decoder alone). Every
    stack keeps at least one layer, so a target that only emptying a stack would meet is refused.
    """
    metric = recipe.target.metric
    layer_cost = {}
    for site in before.sites.values():
        layer = site.name.rsplit(".", 1)[0]
        layer_cost[layer] = layer_cost.get(layer, 0) + (site.flops if metric == "flops" else site.params)
    total = before.total(metric)
    budget = recipe.target.get(metric) * total
    removed, spent = [], total
    for layer in sorted(importance, key=importance.get):
        if spent <= budget:
            break
        if not recipe.selects(layer):
            continue
        stack = layer.split(".")[0]
        in_stack = [name for name in importance if name.startswith(stack + ".")]
        if len(in_stack) - sum(r in in_stack for r in removed) <= 1:
            continue  # a stack keeps at least one layer
        removed.append(layer)
        spent -= layer_cost[layer]
    if spent > budget:
        limited = f" of {recipe.sites}" if recipe.sites is not None else ""
        raise RecipeError(f"target.{metric}={recipe.target.get(metric)} cannot be met by removing whole layers"
                          f"{limited}: every stack keeps at least one layer")
    return removed


class BlockImportance:
    """Running sums of 1 - cos(input, output) of each layer's hidden states: `hook(name)` is the forward hook that
    adds one call of the layer `name`. `block_importance` hooks every layer of a model; a caller that runs one
    block at a time hooks each block in turn (`hfprune.structured.offload`)."""

    def __init__(self):
        self.sums: dict[str, float] = {}

    def hook(self, name: str):
        def record(module, args, output):
            hidden_in = args[0]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cosine = nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            self.sums[name] = self.sums.get(name, 0.0) + float(1 - cosine.mean())

        return record

    def scores(self, num_batches: int) -> dict[str, float]:
        """`"<stack>.<index>"` -> block importance, averaged over tokens and then over `num_batches` batches."""
        return {name: total / num_batches for name, total in self.sums.items()}


@torch.no_grad()
def block_importance(model: nn.Module, batches: list) -> dict[str, float]:
    """Block importance of every layer, `"<stack>.<index>"` -> 1 - cos(input, output), averaged over tokens and
    then over `batches`."""
    importance = BlockImportance()
    handles = []
    for stack in find_stacks(model):
        for index, layer in enumerate(stack.layers):
            handles.append(layer.register_forward_hook(importance.hook(f"{stack.spec.name}.{index}")))
    try:
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    return importance.scores(len(batches))
