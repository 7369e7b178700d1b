"""Iterative one-shot pruning: reach the budget in several rounds of scoring and search, without training between
them.

A criterion scores every unit of the dense model, but what one unit is worth depends on what else goes: once a
layer has lost half its FFN, the neurons it keeps carry more of its output. One-shot scoring misses that, which is
what bites at large cuts. Here round k of `iterative_steps` searches a plan for a k-th of the way from the dense
model to the target, masks what that plan removes, and scores the model again as it is then; units masked earlier
can never come back (their score is `GONE`), so each round only adds to the removed set. The final search over the
last scores happens in the caller, as for one round. This is Torch-Pruning's `iterative_steps` without its
fine-tuning between steps; Kwon et al.'s one-shot framework (2022) is the one-round case.
"""

from __future__ import annotations

from dataclasses import replace

from ..arch import STRUCTURE_OF_KIND
from ..core.masks import SoftMasks
from ..cost.flops import ModelCount
from ..recipe import Recipe
from ..settings import TARGET_COUNTS
from .balance import balance_layers
from .criteria import Scores, compute_scores
from .search import mark_gone, search


def step_target(recipe: Recipe, counts: ModelCount, share: float) -> dict:
    """The target `share` (in (0, 1]) of the way from the dense model (`counts`) to `recipe.target`: a fraction
    moves from 1 to its value, a kept count from the dense count to its value."""
    steps = {}
    for key, goal in recipe.target.to_dict().items():
        if key in TARGET_COUNTS:
            dense = sum(s.units for s in counts.sites.values() if STRUCTURE_OF_KIND[s.kind] == key)
            steps[key] = round(dense - (dense - goal) * share)
        else:
            steps[key] = 1 - (1 - goal) * share
    return steps


def iterated_scores(model, recipe: Recipe, counts: ModelCount, scores: Scores, batches: list) -> Scores:
    """Scores for the final search after `recipe.iterative_steps - 1` intermediate rounds (see the module text).

    Args:
        model: the model being pruned, still dense.
        recipe: the resolved recipe (its target, criterion, sites, minimums, rounding).
        counts: `hfprune.count` of the dense model, as the search prices it.
        scores: the dense model's scores (round one).
        batches: the calibration batches (with decoder inputs for encoder-decoders).

    Returns:
        Scores of the model with the last intermediate plan masked, removed units scored `GONE`.
    """
    metric = recipe.target.metric
    for step in range(1, recipe.iterative_steps):
        share = step / recipe.iterative_steps
        balanced = balance_layers(scores, counts, metric, recipe.layer_balance)
        plan = search(counts, balanced, replace(recipe, target=step_target(recipe, counts, share)))
        with SoftMasks(model) as masks:  # heads and neurons only (the recipe refuses other structures)
            plan.apply(masks)
            scores = mark_gone(compute_scores(model, recipe.criterion, batches), masks)
    return scores
