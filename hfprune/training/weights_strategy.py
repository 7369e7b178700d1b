"""`WeightPruning`: single weights pruned by magnitude while training (`structures: [weights]`).

The sparsity rises on the recipe's schedule (on the cubic curve, like the structured one on the kept FLOPs); at
each pruning step the mask is re-selected among the weights still kept (`hfprune.sparsity.masks.WeightMasks`).
Pruned weights are set back to exactly zero right after every optimizer step, so every forward pass sees them
at 0 and the trained model keeps them. `hfprune/weight_sparsity` is logged.
"""

from __future__ import annotations

from ..errors import RecipeError
from ..recipe import Recipe
from ..settings import WeightSettings
from ..sparsity.masks import WeightMasks
from .schedule import Schedule
from .strategy import PruningStrategy


def _training_weight_settings(recipe: Recipe) -> WeightSettings:
    """The recipe's weight settings, refusing what training cannot do yet."""
    settings = recipe.weights
    if recipe.structures != ["weights"]:
        raise RecipeError("PruningCallback: structures [weights] cannot be combined with heads/neurons/layers yet; "
                          "sparsify weights alone, or combine them one-shot with hfprune.prune")
    if settings.criterion != "magnitude":
        raise RecipeError(f"PruningCallback: weights.criterion {settings.criterion!r} needs calibration data; during "
                          "training use magnitude (or sparsify one-shot with hfprune.prune, then fine-tune)")
    kind = recipe.schedule.type if recipe.schedule is not None else "oneshot"
    if settings.n_m is not None and kind != "oneshot":
        raise RecipeError(f"PruningCallback: an N:M pattern ({settings.pattern}) is reached in one step; use a "
                          "oneshot schedule")
    return settings


class WeightPruning(PruningStrategy):
    """Magnitude pruning of single weights on the recipe's schedule, the zeros kept through every optimizer step.

    Args:
        recipe: a `Recipe` with `weights` settings, `structures: [weights]` alone and the magnitude criterion
            (an N:M pattern only with a oneshot schedule).

    Attributes:
        settings: the recipe's `WeightSettings`.
        weight_masks: the `WeightMasks` from train begin to train end (None outside).
    """

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.settings = _training_weight_settings(recipe)
        self.weight_masks: WeightMasks | None = None

    def final_kept(self) -> float:
        return 1 - self.settings.sparsity  # the schedule runs on the kept density

    def check_shrink(self, schedule: Schedule, args) -> Schedule:
        raise RecipeError("schedule.shrink removes pruned heads and neurons; a weights recipe has none")

    @property
    def active(self) -> bool:
        # Weight masks need no saving: the checkpoint's zeros are the masks when training resumes.
        return self.weight_masks is not None

    def start(self, model, saved: dict | None) -> None:
        self.weight_masks = WeightMasks(model, self.settings)  # the zeros already there stay
        self.metrics = saved["metrics"] if saved is not None else {"hfprune/weight_sparsity": 0.0}

    def after_optimizer_step(self) -> None:
        # Momentum and weight decay move pruned weights off zero; the next forward must see them at exactly 0.
        if self.weight_masks is not None:
            self.weight_masks.apply()

    def step_end(self, model, step: int, optimizer=None) -> None:
        if self.weight_masks is None:
            return
        density = self.schedule.target_at(step)
        if density is not None:
            self.weight_masks.prune_to(1 - density)
            self.metrics = {"hfprune/weight_sparsity": self.weight_masks.sparsity()}

    def end(self, model) -> None:
        if self.weight_masks is None:
            return
        self.weight_masks.apply()
        self.weight_masks = None
        self.record_recipe(model)
