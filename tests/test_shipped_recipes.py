"""Every recipe in recipes/ loads and validates (a typo there would reach users first)."""

from pathlib import Path

import pytest

import hfprune

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_shipped_recipe_loads(path):
    recipe = hfprune.Recipe.load(path)
    assert recipe.to_dict() == hfprune.Recipe.from_dict(recipe.to_dict()).to_dict()
    if recipe.schedule is not None:  # a training recipe: the callback accepts it
        hfprune.PruningCallback(recipe)
