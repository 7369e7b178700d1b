"""Per-example gate gradients (Fisher, Taylor) and layer balance in the global search."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, build, inputs

import hfprune
from hfprune.errors import RecipeError
from hfprune.structured.balance import balance_layers, layer_of
from hfprune.structured.criteria import compute_scores
from hfprune.structured.search import unit_cost


def _labelled(family, batch, seed):
    data = inputs(family, batch=batch, seed=seed)
    if FAMILIES[family][3] == "text":
        data["labels"] = torch.arange(batch) % 2
    return data


def _single(batch: dict, i: int) -> dict:
    return {k: v[i : i + 1] for k, v in batch.items()}


@pytest.mark.parametrize("family", ["bert", "llama", "wav2vec2", "whisper"])
def test_fisher_sums_squared_gradients_of_single_examples(family):
    """One batch of 3 examples scores like 3 batches of one example each: the gradient of every example is
    its own, not a batch mean in which opposite signs cancel."""
    model = build(family, **({"hidden_dropout_prob": 0.0} if family == "bert" else {})).eval()
    batch = _labelled(family, 3, seed=5)
    if "attention_mask" in batch:
        # No padding: every example then weighs the same in the batch's mean loss (a causal LM's is a mean over
        # tokens), and an example alone is the same input as in the batch.
        batch["attention_mask"][:] = 1
    together = compute_scores(model, "fisher", [batch])
    alone = compute_scores(model, "fisher", [_single(batch, i) for i in range(3)])
    for table in ("heads", "neurons"):
        for name, scores in getattr(together, table).items():
            torch.testing.assert_close(scores, getattr(alone, table)[name], rtol=1e-3, atol=1e-9)
    assert next(iter(together.head_grads.values())).shape[0] == 3, "one gradient row per example"


def test_layer_balance_evens_out_importance_per_flop():
    model = build("bert")
    batches = [_labelled("bert", 4, seed=s) for s in range(2)]
    counts = hfprune.count(model, seq_len=12)
    scores = compute_scores(model, "fisher", batches)
    assert balance_layers(scores, counts, "flops", 0.0) is scores

    def densities(s):
        totals = {}
        for table in (s.heads, s.neurons):
            for name, values in table.items():
                layer = totals.setdefault(layer_of(name), [0.0, 0.0])
                layer[0] += float(values.sum())
                layer[1] += unit_cost(counts.sites[name], "flops")[0] * len(values)
        return [score / cost for score, cost in totals.values()]

    before, after = densities(scores), densities(balance_layers(scores, counts, "flops", 1.0))
    assert max(before) / min(before) > 1.01, "the tiny model's layers differ to begin with"
    assert max(after) / min(after) == pytest.approx(1.0, rel=1e-5)
    half = densities(balance_layers(scores, counts, "flops", 0.5))
    assert max(after) / min(after) < max(half) / min(half) < max(before) / min(before)


def test_layer_balance_moves_the_budget_toward_uniform_and_still_meets_it():
    kept = {}
    for strength in (0.0, 1.0):
        model = build("bert")
        recipe = hfprune.Recipe(target={"flops": 0.5}, layer_balance=strength, round_neurons=1, num_samples=8)
        report = hfprune.prune(model, recipe, calibration=[_labelled("bert", 4, seed=s) for s in range(2)])
        assert report.flops_kept <= 0.5 + 1e-9
        kept[strength] = [after for _, after in report.kept_per_site().values()]
    assert kept[0.0] != kept[1.0]


@pytest.mark.parametrize("value", [-0.1, 1.5, True])
def test_layer_balance_outside_zero_to_one_is_refused(value):
    with pytest.raises(RecipeError, match="layer_balance"):
        hfprune.Recipe(layer_balance=value)
