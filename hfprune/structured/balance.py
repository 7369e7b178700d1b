"""Layer balance: how much the search may favour one layer over another.

A global search by importance per unit of cost (Kwon et al. 2022) empties the layers whose units score low, and
scores of late layers are often low: in a classifier that reads one token, a last-layer unit acts on that token
only, while an early unit acts on all of them (its gradient is summed over every position). Those layers can be
nearly emptied at tight budgets (all-MiniLM-L6-v2 at 40 % FLOPs kept FFN widths [1056, 808, 480, 264, 96, 24]),
which no short recovery undoes. Balancing divides every layer's scores by the layer's importance per unit of
cost, raised to `strength`: 0 is the plain global search, 1 gives every layer the same mean importance per
FLOP, so layers then compete only through how unevenly their own units score, while heads and neurons within
a layer keep their relative values.
"""

from __future__ import annotations

from dataclasses import replace

from ..cost.flops import ModelCount
from .criteria import Scores
from .search import GONE, unit_cost


def layer_of(site_name: str) -> str:
    """`"decoder.3.attention"` -> `"decoder.3"`."""
    return site_name.rsplit(".", 1)[0]


def balance_layers(scores: Scores, counts: ModelCount, metric: str, strength: float) -> Scores:
    """`scores` with each layer's heads and neurons scaled by `(model density / layer density) ** strength`,
    where a density is the sum of the layer's (still present) scores over their cost under `metric`."""
    if strength == 0 or not scores.comparable:
        return scores  # criteria without a shared scale are split by budget share per kind, not across layers
    totals: dict[str, list[float]] = {}
    for table in (scores.heads, scores.neurons):
        for name, values in table.items():
            present = values[values != GONE]
            per_unit, _ = unit_cost(counts.sites[name], metric)
            layer = totals.setdefault(layer_of(name), [0.0, 0.0])
            layer[0] += float(present.sum())
            layer[1] += per_unit * len(present)
    dense = {layer: score / cost for layer, (score, cost) in totals.items() if score > 0 and cost > 0}
    if not dense:
        return scores
    overall = sum(totals[layer][0] for layer in dense) / sum(totals[layer][1] for layer in dense)
    factor = {layer: (overall / density) ** strength for layer, density in dense.items()}

    def scaled(table: dict) -> dict:
        return {name: values * factor.get(layer_of(name), 1.0) for name, values in table.items()}

    return replace(scores, heads=scaled(scores.heads), neurons=scaled(scores.neurons))
