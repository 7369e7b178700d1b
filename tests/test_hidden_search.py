"""`structures: [hidden, heads, neurons]`: the hidden size and the units searched in one budget (`hidden_search.py`)."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import build, inputs

import hfprune
from hfprune.checkpoint import loads_without_hfprune
from hfprune.core.hidden import residual_stream
from hfprune.cost.hidden import hidden_cost
from hfprune.structured.hidden_search import candidate_widths

STRUCTURES = ["hidden", "heads", "neurons"]


def _batches(family: str, count: int = 2) -> list[dict]:
    return [inputs(family, seed=seed) for seed in range(count)]


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _recipe(target: dict, **fields) -> hfprune.Recipe:
    # Magnitude without tuning keeps these tests quick; the search itself does not depend on the criterion.
    settings = {"structures": STRUCTURES, "criterion": "magnitude", "tune": False, "reconstruct": False,
                "round_hidden": 8, "round_neurons": 1, **fields}
    return hfprune.Recipe(target=target, **settings)


def _kept(report, metric: str) -> float:
    return report.after.total(metric) / report.before.total(metric)


@pytest.mark.parametrize(
    ("family", "target", "structures"),
    [
        ("llama", {"params": 0.7}, STRUCTURES),
        ("llama", {"nonembedding_params": 0.6}, ["hidden", "neurons"]),
        ("bert", {"flops": 0.6}, STRUCTURES),
        ("distilbert", {"params": 0.75}, ["hidden", "heads"]),
    ],
)
def test_search_meets_the_target_and_keeps_the_width_of_least_kl(family, target, structures):
    model = build(family)
    recipe = _recipe(target, structures=structures)
    report = hfprune.prune(model, recipe, calibration=_batches(family))
    metric, fraction = next(iter(target.items()))
    assert _kept(report, metric) <= fraction + 1e-9
    width = residual_stream(model).width
    assert report.hidden == [32, width] and width in report.hidden_search
    assert width == min(report.hidden_search, key=report.hidden_search.get)
    # The full width is always among the widths tried, and the rest are multiples of round_hidden, widest first.
    widths = list(report.hidden_search)
    assert widths == sorted(widths, reverse=True) and all(w % 8 == 0 for w in widths)
    assert len(widths) <= recipe.hidden_candidates
    # What was measured for the winner is what the pruned model does: the narrowed copy was exact.
    assert report.quality["search"]["kl"] == pytest.approx(report.hidden_search[width], abs=1e-6)
    assert "hidden-size search" in str(report) and report.summary()["hidden_search"] == report.hidden_search
    assert torch.isfinite(_logits(model, inputs(family))).all()


def test_width_where_the_full_one_cannot_meet_the_budget_and_units_are_pruned_too():
    """With minimums that leave too little to prune at the full width, the hidden size must go; heads and
    neurons are still searched at the narrower width, under the dense model's budget."""
    model = build("llama")
    report = hfprune.prune(model, _recipe({"params": 0.6}, min_heads=2, min_neurons=16), calibration=_batches("llama"))
    assert 32 not in report.hidden_search and report.hidden[1] < 32
    assert model.config.hidden_size == report.hidden[1]
    assert any(after < before for before, after in report.kept_per_site().values())  # units went as well
    assert _kept(report, "params") <= 0.6 + 1e-9


def test_full_width_is_kept_when_hidden_pruning_cannot_help():
    # round_hidden 64 leaves no narrower hidden size for a 32-wide model: heads and neurons carry the budget alone.
    model = build("llama")
    report = hfprune.prune(model, _recipe({"params": 0.8}, round_hidden=64), calibration=_batches("llama"))
    assert report.hidden == [32, 32] and list(report.hidden_search) == [32]
    assert model.config.hidden_size == 32 and model._hfprune_record.hidden is None
    assert _kept(report, "params") <= 0.8 + 1e-9


def test_candidate_widths_are_evenly_spaced_down_to_the_widest_that_meets_the_target_alone():
    model = build("llama")
    cost = hidden_cost(model, hfprune.count(model, seq_len=12))
    # Far below what the hidden size can reach alone: down to the narrowest allowed.
    assert candidate_widths(cost, _recipe({"params": 0.1}), 4) == [32, 24, 16, 8]
    assert candidate_widths(cost, _recipe({"params": 0.1}, hidden_candidates=2), 4) == [32, 8]
    # The config's multiple joins round_hidden: 12 with 4 heads -> multiples of 12.
    assert candidate_widths(cost, _recipe({"params": 0.1}, round_hidden=3), 4) == [32, 24, 12]
    # A mild target: no narrower width than the one that meets it alone (24) is worth trying.
    assert candidate_widths(cost, _recipe({"params": 0.95}), 4) == [32, 24]
    assert candidate_widths(cost, _recipe({"params": 1.0}), 4) == [32]


@pytest.mark.parametrize(
    ("fields", "uniform"),
    [({"min_heads": 2, "min_neurons": 30, "target": {"params": 0.6}}, True),  # 2 heads and 30 neurons per layer
     ({"min_heads": 2, "min_neurons": 16, "target": {"params": 0.6}}, False)],
)
def test_pruned_llama_saves_and_reloads(tmp_path, fields, uniform):
    model, batch = build("llama", tie_word_embeddings=True), inputs("llama")
    settings = dict(fields)
    report = hfprune.prune(model, _recipe(settings.pop("target"), **settings), calibration=_batches("llama"))
    assert report.hidden[1] < 32
    expected = _logits(model, batch)
    model.save_pretrained(tmp_path)
    assert loads_without_hfprune(model) == uniform
    if uniform:
        plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert plain.config.hidden_size == report.hidden[1]
        assert torch.allclose(_logits(plain, batch), expected, atol=1e-5)
    reloaded = hfprune.from_pretrained(tmp_path)
    assert residual_stream(reloaded).width == report.hidden[1]
    assert torch.allclose(_logits(reloaded, batch), expected, atol=1e-5)


def test_refinement_runs_on_the_narrowed_model():
    """Fisher scores, rearrangement and weight reconstruction with added biases all follow the chosen width."""
    model = build("llama")
    batches = _batches("llama")
    recipe = _recipe({"params": 0.6}, criterion="fisher", reconstruct=True, add_bias=True, min_heads=2,
                     min_neurons=16)
    report = hfprune.prune(model, recipe, calibration=batches)
    assert report.hidden[1] < 32 and "weight reconstruction" in report.quality
    assert any(step.startswith("rearrangement") for step in report.quality)
    assert report.quality["weight reconstruction"]["kl"] <= report.quality["search"]["kl"] + 1e-6
    assert model.config.mlp_bias and model.model.layers[0].mlp.down_proj.bias.shape == (report.hidden[1],)
    assert torch.isfinite(_logits(model, batches[0])).all()


def test_deterministic():
    results = []
    for _ in range(2):
        model = build("bert")
        report = hfprune.prune(model, _recipe({"flops": 0.6}), calibration=_batches("bert"))
        results.append((report.hidden, report.hidden_search, report.kept_per_site()))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"structures": ["hidden", "layers"]}, "`hidden` cannot be combined with \\['layers'\\]"),
        ({"structures": ["hidden", "heads", "layers"]}, "`hidden` cannot be combined with \\['layers'\\]"),
        ({"structures": ["hidden", "channels"]}, "`hidden` cannot be combined with \\['channels'\\]"),
        ({"target": {"heads": 4}}, "fraction target"),
        ({"target": {"latency": 0.5}}, "fraction target"),
        ({"hidden_candidates": 1}, "hidden_candidates must be >= 2"),
    ],
)
def test_bad_combinations_are_refused(fields, message):
    with pytest.raises(hfprune.RecipeError, match=message):
        hfprune.Recipe(**{"target": {"params": 0.8}, "structures": STRUCTURES, **fields})


@pytest.mark.parametrize("family", ["gpt2", "electra"])
def test_family_without_a_residual_stream_description_is_refused_before_anything_changes(family):
    model = build(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(hfprune.PruningSpecError, match="families that support it"):
        hfprune.prune(model, _recipe({"params": 0.8}), calibration=_batches(family))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_needs_calibration_data():
    with pytest.raises(hfprune.CalibrationError):
        hfprune.prune(build("llama"), _recipe({"params": 0.8}))
