"""Iterative one-shot pruning (`iterative_steps`): rounds of scoring with earlier choices masked."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import build, inputs

import hfprune
from hfprune.structured import iterative
from hfprune.structured.criteria import compute_scores
from hfprune.structured.iterative import iterated_scores, step_target
from hfprune.structured.rearrange import _best_removed_set
from hfprune.structured.search import GONE, search


def calibration(family, batches=4):
    data = [inputs(family, seed=i) for i in range(batches)]
    if family == "bert":
        for i, batch in enumerate(data):
            batch["labels"] = torch.tensor([i % 2, (i + 1) % 2])
    return data


def removed(plan, counts) -> set:
    heads, neurons = plan.removals(counts)
    return {(n, i) for table in (heads, neurons) for n, units in table.items() for i in units}


def test_step_target_moves_fractions_and_counts_evenly():
    counts = hfprune.count(build("bert"), seq_len=12)
    dense_heads = sum(s.units for s in counts.sites.values() if s.kind == "attention")
    recipe = hfprune.Recipe(target={"flops": 0.4}, iterative_steps=3)
    assert step_target(recipe, counts, 1 / 3) == pytest.approx({"flops": 0.8})
    assert step_target(recipe, counts, 1.0) == pytest.approx({"flops": 0.4})
    recipe = hfprune.Recipe(target={"heads": 2}, iterative_steps=2)
    assert step_target(recipe, counts, 0.5) == {"heads": round(dense_heads - (dense_heads - 2) / 2)}


def test_each_round_only_adds_to_what_is_removed_and_the_final_plan_keeps_none_of_it(monkeypatch):
    model = build("bert")
    batches = calibration("bert")
    counts = hfprune.count(model, seq_len=12)
    recipe = hfprune.Recipe(target={"flops": 0.4}, iterative_steps=3, round_neurons=1)
    plans = []
    monkeypatch.setattr(iterative, "search", lambda *args: plans.append(search(*args)) or plans[-1])
    dense_scores = compute_scores(model, "fisher", batches)
    before = copy.deepcopy(dense_scores)
    scores = iterated_scores(model, recipe, counts, dense_scores, batches)
    final = search(counts, scores, recipe)
    assert len(plans) == 2  # rounds 1 and 2; the caller's search is round 3
    first, second, last = (removed(p, counts) for p in (*plans, final))
    assert first and first < second < last
    gone = {(n, i) for table in (scores.heads, scores.neurons) for n, s in table.items()
            for i in (s == GONE).nonzero().flatten().tolist()}
    assert gone == second
    # Units still present were scored again on the masked model: not the dense scores.
    assert any(not torch.equal(before.neurons[n][s != GONE], s[s != GONE]) for n, s in scores.neurons.items())
    assert not any(bool((s == GONE).any()) for s in before.neurons.values()), "the dense scores are left alone"


@pytest.mark.parametrize("family", ["bert", "llama", "whisper"])
def test_iterative_prune_meets_the_budget_and_the_pruned_model_reloads(family, tmp_path):
    model = build(family)
    sites = ["*"] if family == "whisper" else None
    recipe = hfprune.Recipe(target={"flops": 0.5}, iterative_steps=3, round_neurons=4, sites=sites)
    report = hfprune.prune(model, recipe, calibration=calibration(family))
    assert report.flops_kept <= 0.5 + 1e-9
    assert report.recipe.iterative_steps == 3
    assert not any(bool((s == GONE).any()) for s in report.scores.neurons.values()), "report.scores: the dense ones"
    model.save_pretrained(tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    batch = inputs(family, seed=99)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_one_step_is_the_plain_one_shot():
    dense = build("bert")
    one, default = copy.deepcopy(dense), copy.deepcopy(dense)
    first = hfprune.prune(one, hfprune.Recipe(target={"flops": 0.5}, iterative_steps=1), calibration("bert"))
    second = hfprune.prune(default, hfprune.Recipe(target={"flops": 0.5}), calibration("bert"))
    assert second.recipe.iterative_steps == 1
    assert first.kept_per_site() == second.kept_per_site()


def test_rearrangement_never_swaps_back_a_unit_an_earlier_round_removed():
    # Units 0 (removed by an earlier round: masked, so its gradient is 0) and 1 are removed. Keeping 0 instead of
    # 2, whose gradient cancels 1's, would zero the second-order estimate; but 0 may not come back.
    grads = torch.tensor([[0.0, 1.0, -1.0, 0.5], [0.0, 1.0, -1.0, 0.5]], dtype=torch.float64)
    assert _best_removed_set(grads, [2, 3], torch.zeros(4, dtype=torch.bool)) == [0, 3]
    assert _best_removed_set(grads, [2, 3], torch.tensor([True, False, False, False])) == [1, 2]


@pytest.mark.parametrize(
    "fields, message",
    [({"iterative_steps": 0}, "iterative_steps must be >= 1"),
     ({"iterative_steps": 2, "structures": ["layers"]}, r"not with structures \['layers'\]"),
     ({"iterative_steps": 2, "structures": ["hidden"]}, r"not with structures \['hidden'\]")],
)
def test_bad_iterative_steps_are_refused(fields, message):
    with pytest.raises(hfprune.RecipeError, match=message):
        hfprune.Recipe(target={"flops": 0.5}, **fields)


def test_the_callback_refuses_iterative_steps():
    with pytest.raises(hfprune.RecipeError, match="iterative_steps is for one-shot hfprune.prune"):
        hfprune.PruningCallback(hfprune.Recipe(target={"flops": 0.5}, iterative_steps=3))
