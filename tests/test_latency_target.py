"""`target.latency`: a measured latency model prices every unit, the search spends it, bad budgets are refused."""

from __future__ import annotations

import importlib

import pytest
import torch
from tiny_models import build, inputs

import hfprune
from hfprune.cost.latency import LatencyProfile, profile_latency
from hfprune.publish.summary import summarize
from hfprune.structured.criteria import compute_scores
from hfprune.structured.search import planned_cost, search

prune_module = importlib.import_module("hfprune.structured.prune")  # `hfprune.prune` the attribute is the function


def calibration(family, batches=3):
    return [inputs(family, seed=i) for i in range(batches)]


def kept_units(plan, table):
    return sum(len(kept) for kept in getattr(plan, table).values())


def synthetic_profile(counts, heads_rate, neurons_rate, fixed=0.0):
    """A profile whose prices are chosen by the test, not timed: the search's behaviour is then exact."""
    flops = {"heads": 0, "neurons": 0}
    for site in counts.sites.values():
        flops["heads" if "attention" in site.kind else "neurons"] += site.flops
    modelled = heads_rate * flops["heads"] + neurons_rate * flops["neurons"]
    return LatencyProfile(seconds=modelled + fixed, seconds_per_flop={"heads": heads_rate, "neurons": neurons_rate},
                          fixed=fixed, batch_size=1)


def test_search_spends_a_latency_budget_on_measured_prices():
    model = build("bert")
    counts = hfprune.count(model, seq_len=12)
    scores = compute_scores(model, "fisher", calibration("bert"))
    recipe = hfprune.Recipe(target={"latency": 0.5}, round_neurons=1)
    dear_heads = synthetic_profile(counts, heads_rate=10.0, neurons_rate=1.0).costed(counts)
    dear_neurons = synthetic_profile(counts, heads_rate=1.0, neurons_rate=10.0).costed(counts)
    plan_a, plan_b = search(dear_heads, scores, recipe), search(dear_neurons, scores, recipe)
    for plan, costed in ((plan_a, dear_heads), (plan_b, dear_neurons)):
        assert planned_cost(plan, costed, "latency") <= 0.5 * costed.seconds + 1e-9
    # Where heads cost ten times more per FLOP, fewer heads and more neurons are kept, and vice versa.
    assert kept_units(plan_a, "heads") < kept_units(plan_b, "heads")
    assert kept_units(plan_a, "neurons") > kept_units(plan_b, "neurons")


@pytest.mark.parametrize("family, structures", [
    ("bert", ["heads", "neurons"]),
    ("llama", ["heads", "neurons"]),  # GQA: half the query heads of every KV group
    ("wav2vec2", ["heads", "neurons", "channels"]),
    ("whisper", ["heads", "neurons"]),
])
def test_profile_prices_every_structure_and_leaves_the_model_alone(family, structures):
    model = build(family).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    counts = hfprune.count(model, seq_len=8, conv="channels" in structures)
    profile = profile_latency(model, counts, structures, batch_size=2, runs=2)
    stacks = ("encoder ", "decoder ") if family == "whisper" else ("",)
    assert set(profile.seconds_per_flop) == {stack + s for stack in stacks for s in structures}
    assert all(rate > 0 for rate in profile.seconds_per_flop.values()), "no structure may look free"
    assert profile.seconds > 0 and 0 <= profile.fixed <= profile.seconds
    costed = profile.costed(counts)
    assert costed.seconds == profile.seconds
    assert all(site.seconds_per_unit > 0 for site in costed.sites.values() if site.units)
    assert model.training, "the model's mode is restored"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_prune_to_a_latency_target_meets_the_modelled_budget_and_reports_measured_times(family, monkeypatch):
    model = build(family)
    calls = {}

    def fake_profile(model, counts, structures, batch_size=1, runs=10):
        calls["batch_size"] = batch_size
        calls["profile"] = synthetic_profile(counts, heads_rate=3e-9, neurons_rate=1e-9, fixed=1e-4)
        return calls["profile"]

    monkeypatch.setattr(prune_module, "profile_latency", fake_profile)
    recipe = hfprune.Recipe(target={"latency": 0.6}, latency_batch_size=4, round_neurons=1)
    report = hfprune.prune(model, recipe, calibration(family))
    assert calls["batch_size"] == 4
    profile = calls["profile"]
    modelled_after = profile.fixed + sum(
        profile.seconds_per_flop["heads" if "attention" in site.kind else "neurons"] * site.flops
        for site in report.after.sites.values()
    )
    assert modelled_after <= 0.6 * profile.seconds + 1e-12
    before, after = report.latency
    assert before == profile.seconds and after > 0
    assert "latency ms" in str(report) and "batch 4" in str(report)
    assert report.summary()["latency_s"] == report.latency
    card_metrics = summarize(model, report).metrics
    assert card_metrics["after"]["latency (ms, batch 4)"] == round(after * 1e3, 3)


def test_a_latency_target_below_the_fixed_time_is_refused_before_any_weight_changes(monkeypatch):
    model = build("bert")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(
        prune_module, "profile_latency",
        lambda model, counts, structures, batch_size=1, runs=10: synthetic_profile(counts, 1e-9, 1e-9, fixed=1.0),
    )
    with pytest.raises(hfprune.RecipeError, match=r"target.latency=0.3 cannot be met: .*% of the measured time"):
        hfprune.prune(model, {"target": {"latency": 0.3}}, calibration("bert"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_latency_recipes_are_validated():
    with pytest.raises(hfprune.RecipeError, match="latency_batch_size must be >= 1"):
        hfprune.Recipe(target={"latency": 0.5}, latency_batch_size=0)
    with pytest.raises(hfprune.RecipeError, match=r"target.latency must be a fraction"):
        hfprune.Recipe(target={"latency": 2})
    with pytest.raises(hfprune.RecipeError, match="target.latency is measured once"):
        hfprune.PruningCallback({"target": {"latency": 0.5}})
    with pytest.raises(hfprune.RecipeError, match=r"\[layers\] needs a flops, params or nonembedding_params target"):
        hfprune.prune(build("bert"), {"target": {"latency": 0.5}, "structures": ["layers"]}, calibration("bert"))


def test_encoder_decoders_are_timed_in_generate_decoding_the_budget_length(monkeypatch):
    from hfprune.cost import latency

    calls = []
    timer = latency.measure_latency

    def spy(models, inputs, *args, **kwargs):
        calls.append((sorted(inputs), kwargs))
        return timer(models, inputs, *args, **kwargs)

    monkeypatch.setattr(latency, "measure_latency", spy)
    model = build("whisper")
    counts = hfprune.count(model, seq_len=5, encoder_seq_len=16)
    profile = latency.profile_latency(model, counts, ["heads"], runs=2)
    assert set(profile.seconds_per_flop) == {"encoder heads", "decoder heads"}
    for keys, kwargs in calls:
        assert keys == ["input_features"], "generate() is given the audio only"
        assert kwargs["method"] == "generate" and kwargs["min_new_tokens"] == kwargs["max_new_tokens"] == 5
    # The decoder's cross-attention heads are priced at the decoder's rate, the encoder's heads at the encoder's.
    costed = profile.costed(counts)
    for name, site in costed.sites.items():
        if site.kind != "ffn":
            group = f"{name.split('.')[0]} heads"
            assert site.seconds_per_unit == pytest.approx(profile.seconds_per_flop[group] * site.flops_per_unit)
