"""Registries of named implementations that a recipe may ask for by name (`criterion: fisher`,
`weights: {criterion: wanda}`).

The registries live down here, beside the recipe that validates names against them, while the implementations
register themselves from the layers that hold them (`hfprune.structured.criteria`, `hfprune.sparsity.criteria`).
Importing `hfprune` imports every layer, so a recipe is always checked against everything that is registered,
and no lower layer has to import an upper one to know the names.
"""

from __future__ import annotations

from typing import Any

from .errors import RecipeError


class Registry(dict):
    """`name -> implementation`, named after the recipe field that selects from it.

    Args:
        field: the recipe field whose values are looked up here (named in errors).
    """

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def register(self, name: str, implementation: Any) -> Any:
        self[name] = implementation
        return implementation

    def check(self, name: Any, also: tuple[str, ...] = ()) -> None:
        """Raise `RecipeError` naming the field and the known names unless `name` is registered (or in `also`)."""
        if name not in self and name not in also:
            known = ", ".join(sorted([*self, *also]))
            raise RecipeError(f"{self.field} {name!r} is unknown; available: {known}")


CRITERIA = Registry("criterion")
"""Structured importance criteria: `name -> criterion(model, batches, channels=False) -> Scores`."""

WEIGHT_CRITERIA = Registry("weights.criterion")
"""Weight-sparsity criteria: `name -> WeightCriterion`."""
