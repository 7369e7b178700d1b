"""Typed recipe settings: `target`, `weights`, `distill` and `schedule` are dataclasses, built and checked when the
`Recipe` is, read from and written back to the same mappings a YAML/JSON file holds."""

from dataclasses import replace
from pathlib import Path

import pytest

import hfprune
from hfprune import DistillSettings, Recipe, RecipeError, ScheduleSettings, Target, WeightSettings

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_nested_settings_are_typed_whichever_way_they_arrive():
    recipe = Recipe(target={"params": 0.8}, schedule={"type": "cubic", "end": 0.5}, distill={"alpha": 0.3})
    assert recipe.target == Target(params=0.8) and recipe.target.metric == "params"
    assert recipe.schedule == ScheduleSettings(type="cubic", end=0.5)
    assert recipe.distill == DistillSettings(alpha=0.3, temperature=2.0, hidden=0.0)
    assert recipe.weights is None, "no weights settings without structures: [weights]"

    assert replace(recipe, target={"flops": 0.5}).target == Target(flops=0.5)
    recipe.schedule = {"type": "oneshot", "start": 3}  # assigned later: typed and checked all the same
    assert recipe.schedule == ScheduleSettings(type="oneshot", start=3)
    with pytest.raises(RecipeError, match="schedule.type must be 'oneshot' or 'cubic'"):
        recipe.schedule = {"type": "linear"}


def test_weights_get_their_defaults_filled_in():
    recipe = Recipe(structures=["weights"])
    assert recipe.weights == WeightSettings(sparsity=0.5, pattern="unstructured", criterion="magnitude",
                                            scope="layer", block_size=128)
    two_four = Recipe(structures=["weights"], weights={"pattern": " 2 : 4 ", "criterion": "wanda"}).weights
    assert (two_four.sparsity, two_four.pattern, two_four.n_m, two_four.block_size) == (0.5, "2:4", (2, 4), 128)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipes_round_trip_through_their_mapping(path, tmp_path):
    recipe = Recipe.load(path)
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert Recipe.load(again) == recipe
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert all(isinstance(v, str | int | float | bool | list | dict | type(None)) for v in recipe.to_dict().values())


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"target": 0.5},
         r"target must be a mapping of \['flops', 'params', 'nonembedding_params', 'latency', 'heads', 'neurons'\]"),
        ({"target": {}}, "target must give exactly one of"),
        ({"target": {"flops": 0.5, "params": 0.5}}, "target must give exactly one of"),
        ({"target": {"heads": -1}}, "target.heads must be a non-negative integer count"),
        ({"distill": {"temperature": 0}}, "distill.temperature must be > 0"),
        ({"distill": {"hidden": "yes"}}, "distill.hidden must be a number"),
        ({"structures": ["weights"], "weights": {"criterion": "obs"}},
         "weights.criterion 'obs' is unknown; available: magnitude, sparsegpt, wanda"),
        ({"structures": ["weights"], "weights": ["2:4"]}, "weights must be a mapping"),
        ({"schedule": {"type": "cubic", "end": 0.7, "shrink": 0.5}},
         r"schedule.shrink \(0.5 of training\) must lie between the last pruning step \(0.7 of training\)"),
    ],
)
def test_bad_settings_name_the_field_and_what_it_allows(fields, message):
    with pytest.raises(RecipeError, match=message):
        Recipe(**fields)


def test_help_covers_the_nested_settings():
    text = Recipe.help()
    for line in ("target: ", "target.flops: ", "weights.pattern: ", "distill.alpha: ", "schedule.shrink: "):
        assert f"\n{line}" in f"\n{text}", line


def test_a_registered_weight_criterion_is_accepted_by_name():
    @hfprune.register_weight_criterion("test-largest-first")
    def largest_first(weight, statistic, settings):
        return weight.abs() >= weight.abs().median()

    try:
        assert Recipe(structures=["weights"], weights={"criterion": "test-largest-first"}).weights.criterion == (
            "test-largest-first"
        )
    finally:
        del hfprune.WEIGHT_CRITERIA["test-largest-first"]
