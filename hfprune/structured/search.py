"""Choosing what to keep under a budget: heads, neurons and conv channels allocated globally across layers.

The search follows Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers", Alg. 1),
generalised to per-site costs (GQA, encoder/decoder lengths, cross-attention): for every number h of the most
important head units, spend what is left of the budget on the most important neurons, and keep the (h, n)
with the largest total importance. That needs head and neuron scores on one scale (Fisher, Taylor); for
criteria without one (magnitude, activation) each kind gets the share of the budget it has in the dense model.
Units are ranked by importance per unit of cost (greedy knapsack), since costs differ between sites: encoder
and decoder lengths, GQA slices, conv layers. With equal costs that is Kwon et al.'s order by importance.
Conv channels (speech feature encoders) join the neurons' side of the split.

A *unit* is what can go at once: a head (multi-head attention), one query head from every KV group or a
whole KV group (GQA, per the recipe), a neuron, or a conv channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..arch import STRUCTURE_OF_KIND
from ..cost.flops import ModelCount, SiteCount
from ..errors import CalibrationError, RecipeError
from ..recipe import Recipe
from .criteria import Scores


@dataclass
class Plan:
    """What stays: kept (current) head, neuron and conv-channel indices per site. Sites not listed keep
    everything."""

    heads: dict[str, list[int]] = field(default_factory=dict)
    neurons: dict[str, list[int]] = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)

    def tables(self) -> dict[str, dict[str, list[int]]]:
        """Structure name (`heads`, `neurons`, `channels`) -> its table."""
        return {"heads": self.heads, "neurons": self.neurons, "channels": self.channels}

    def apply(self, masks) -> None:
        """Set `masks` (a `SoftMasks`, with channel gates when the plan has channels) to this plan: 1 for kept
        units, 0 for the rest of each planned site."""
        for table, gates in ((self.heads, masks.heads), (self.neurons, masks.neurons), (self.channels, masks.channels)):
            for name, kept in table.items():
                gates[name].zero_()
                gates[name][kept] = 1.0

    def removals(self, counts: ModelCount) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The complement: heads and neurons to remove, as `remove_heads`/`remove_neurons` take them."""
        heads = {n: sorted(set(range(counts.sites[n].units)) - set(k)) for n, k in self.heads.items()}
        neurons = {n: sorted(set(range(counts.sites[n].units)) - set(k)) for n, k in self.neurons.items()}
        return heads, neurons

    def channel_removals(self, counts: ModelCount) -> dict[str, list[int]]:
        """The conv channels to remove, as `remove_channels` takes them."""
        return {n: sorted(set(range(counts.sites[n].units)) - set(k)) for n, k in self.channels.items()}


GONE = float("-inf")  # the score of a unit that was removed before (it can never be kept again)


def mark_gone(scores: Scores, masks) -> Scores:
    """`scores` with every head and neuron whose gate in `masks` (a `SoftMasks`) is 0 scored `GONE`: what is gone
    stays gone, a removed unit never outranks a kept one (PruningCallback's re-planning, iterative one-shot)."""
    for table, gates in ((scores.heads, masks.heads), (scores.neurons, masks.neurons)):
        for name, gate in gates.items():
            table[name] = table[name].float().masked_fill(gate.detach() == 0, GONE)
    return scores


@dataclass
class _Unit:
    site: str
    members: list[int]
    score: float
    cost: float


def unit_cost(site: SiteCount, metric: str) -> tuple[float, float]:
    """Cost of one unit and of one KV head at `site` under the budget metric."""
    if metric == "flops":
        return site.flops_per_unit, site.flops_per_kv_unit
    if metric in ("params", "nonembedding_params"):
        return site.params_per_unit, site.params_per_kv_unit
    if metric == "latency":
        return site.seconds_per_unit, site.seconds_per_kv_unit
    return 1.0, 0.0  # absolute counts: a head or a neuron counts one


def _head_units(site: SiteCount, scores: torch.Tensor, metric: str, gqa: str) -> list[_Unit]:
    """Units of one attention site, most important first (the order in which a site keeps them)."""
    per_head, per_kv = unit_cost(site, metric)
    heads, kv = site.units, site.kv_units
    group = heads // kv
    if group == 1:
        units = [_Unit(site.name, [h], float(scores[h]), per_head + per_kv) for h in range(heads)]
        return sorted(units, key=lambda u: -u.score)
    groups = scores.view(kv, group)
    if gqa == "groups":
        units = [
            _Unit(site.name, list(range(g * group, (g + 1) * group)), float(groups[g].sum()), group * per_head + per_kv)
            for g in range(kv)
        ]
        return sorted(units, key=lambda u: -u.score)
    # One query head from every group: slice r holds the r-th best head of each group; the KV heads go with the
    # last slice standing, so their cost is charged to slice 0.
    order = groups.argsort(dim=1, descending=True)
    units = []
    for r in range(group):
        members = sorted(int(g * group + order[g, r]) for g in range(kv))
        cost = kv * per_head + (kv * per_kv if r == 0 else 0.0)
        units.append(_Unit(site.name, members, float(groups.gather(1, order[:, r : r + 1]).sum()), cost))
    return units


def _take(candidates: list[_Unit], budget: float) -> int:
    """How many of `candidates` (best first) fit in `budget`."""
    spent = 0.0
    for index, unit in enumerate(candidates):
        spent += unit.cost
        if spent > budget + 1e-9:
            return index
    return len(candidates)


def _by_value(units: list[_Unit]) -> list[_Unit]:
    """`units` (given site by site, each site's best first) ordered by importance per unit of cost: a greedy
    knapsack. Costs differ between sites when lengths do (Whisper's encoder neuron sees 1500 frames, a decoder
    neuron a transcript's few tokens: ordering by importance alone spends the budget on cutting decoder units
    that save nothing), between GQA slices, and between conv layers; with equal costs this is Kwon et al.'s
    order by importance. A site's units stay in their own order (a later slice never before an earlier one):
    each value is capped by the values before it in its site, and the stable sort keeps ties in site order."""
    capped, last = [], {}
    for unit in units:
        value = min(unit.score / max(unit.cost, 1e-30), last.get(unit.site, float("inf")))
        last[unit.site] = value
        capped.append(value)
    order = sorted(range(len(units)), key=lambda i: -capped[i])
    return [units[i] for i in order]


def _best_split(heads: list[_Unit], neurons: list[_Unit], budget: float) -> tuple[int, int]:
    """Kwon et al.'s search: the (h, n) prefix pair under `budget` with the largest total importance."""
    head_cost = torch.tensor([0.0] + [u.cost for u in heads], dtype=torch.float64).cumsum(0)
    head_score = torch.tensor([0.0] + [u.score for u in heads], dtype=torch.float64).cumsum(0)
    neuron_cost = torch.tensor([0.0] + [u.cost for u in neurons], dtype=torch.float64).cumsum(0)
    neuron_score = torch.tensor([0.0] + [u.score for u in neurons], dtype=torch.float64).cumsum(0)
    remaining = budget - head_cost
    n = torch.searchsorted(neuron_cost, remaining + 1e-9, right=True) - 1
    total = torch.where(n >= 0, head_score + neuron_score[n.clamp(min=0)], torch.tensor(float("-inf")))
    h = int(total.argmax())
    return h, int(n[h])


def search(counts: ModelCount, scores: Scores, recipe: Recipe) -> Plan:
    """Choose the heads, neurons and conv channels to keep so the model fits `recipe.target`.

    Args:
        counts: `hfprune.count` of the model to prune, at the budget's sequence length (with `conv=True` when
            channels are pruned, so the budget covers the conv feature encoder).
        scores: importance of every head, neuron and (for `channels`) conv channel
            (`hfprune.structured.criteria.compute_scores`).
        recipe: budget, structures, minimums, rounding and GQA mode.

    Returns:
        `Plan` with the kept indices of every pruned site.

    Raises:
        RecipeError: when the budget cannot be met (the minimums and what is not pruned already exceed it; a
            conv layer always keeps `min_channels` >= 1 channels, so a budget that would empty one fails here).
    """
    metric = recipe.target.metric
    eligible = {
        name
        for name, site in counts.sites.items()
        if site.units > 0
        and STRUCTURE_OF_KIND[site.kind] in recipe.structures
        and recipe.selects(name)
    }
    minimums = {"neurons": recipe.min_neurons, "channels": recipe.min_channels}
    unit_scores = {"neurons": scores.neurons, "channels": scores.channels}
    _check_finite(scores, eligible)
    forced: dict[str, list[_Unit]] = {}
    candidates = {"heads": [], "neurons": [], "channels": []}
    gone: list[_Unit] = []
    for name in sorted(eligible, key=list(counts.sites).index):
        site = counts.sites[name]
        kind = STRUCTURE_OF_KIND[site.kind]
        if kind == "heads":
            units = _head_units(site, scores.heads[name], metric, recipe.gqa)
            per_unit = len(units[0].members)
            keep_at_least = min(-(-recipe.min_heads // per_unit), len(units))
        else:
            if name not in unit_scores[kind]:
                raise RecipeError(f"the criterion's scores have no {kind} for {name}; cannot prune its {kind}")
            per_unit, _ = unit_cost(site, metric)
            score = unit_scores[kind][name]
            units = [_Unit(name, [i], float(score[i]), per_unit) for i in score.argsort(descending=True).tolist()]
            keep_at_least = min(minimums[kind], site.units)
        # A score of -inf marks a unit that is already gone (PruningCallback re-planning): never kept again.
        gone += [u for u in units if u.score == GONE]
        units = [u for u in units if u.score != GONE]
        forced[name] = units[:keep_at_least]
        candidates[kind].extend(units[keep_at_least:])
    budgets = _budgets(counts, recipe, metric, forced, candidates, sum(u.cost for u in gone))
    # Neurons and channels share the non-head side of the split.
    rest = _by_value(candidates["neurons"] + candidates["channels"])
    candidates = {k: _by_value(v) for k, v in candidates.items()}
    if "shared" in budgets and scores.comparable and candidates["heads"] and rest:
        h, n = _best_split(candidates["heads"], rest, budgets["shared"])
        chosen = {"heads": candidates["heads"][:h], "rest": rest[:n]}
    else:
        chosen = {k: candidates[k][: _take(candidates[k], budgets[k])] for k in candidates}

    plan = Plan()
    for name in eligible:
        kept_units = forced[name] + [u for k in chosen for u in chosen[k] if u.site == name]
        members = sorted(m for u in kept_units for m in u.members)
        plan.tables()[STRUCTURE_OF_KIND[counts.sites[name].kind]][name] = members
    _check_cross_attention(plan, counts, recipe)
    for kind, step, minimum in (
        ("neurons", recipe.round_neurons, recipe.min_neurons),
        ("channels", recipe.round_channels, recipe.min_channels),
    ):
        if step > 1 and kind in recipe.structures:
            _round(plan, kind, unit_scores[kind], step, minimum, counts, recipe, metric)
    return plan


def _check_cross_attention(plan: Plan, counts: ModelCount, recipe: Recipe) -> None:
    """Refuse a plan that removes every cross-attention head of an encoder-decoder: its decoder could no longer
    see the encoder's output (a speech model would transcribe nothing it hears)."""
    cross = [n for n, s in counts.sites.items() if s.kind == "cross_attention" and s.units > 0]
    if cross and all(n in plan.heads and not plan.heads[n] for n in cross):
        raise RecipeError(
            f"target {recipe.target.to_dict()} would remove every cross-attention head ({len(cross)} sites): the "
            "decoder could no longer see the encoder. Set min_heads >= 1, a larger target, or leave "
            "cross-attention out of `sites`"
        )


def _check_finite(scores: Scores, eligible: set) -> None:
    """Refuse NaN or +inf scores: one of them poisons the running sums of the split search, which then keeps
    arbitrary units (removed ones included) rather than failing."""
    tables = (scores.heads, scores.neurons, scores.channels)
    bad = [name for table in tables for name, score in table.items()
           if name in eligible and bool((torch.isnan(score) | torch.isposinf(score)).any())]
    if bad:
        raise CalibrationError(
            f"importance scores are NaN or infinite at {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}: the "
            "loss or its gradients overflowed (check the calibration data and the model's dtype)"
        )


def _budgets(counts, recipe, metric, forced, candidates, gone_cost: float = 0.0) -> dict[str, float]:
    """What the candidates may spend, after the fixed parts (not pruned, minimums, KV heads) are paid for;
    `gone_cost` is what units removed earlier cost in `counts` (nothing is paid for them)."""
    forced_cost = sum(u.cost for units in forced.values() for u in units)
    if metric in ("heads", "neurons"):
        budgets = {}
        for kind in candidates:
            wanted = recipe.target.get(kind)
            forced_kind = sum(
                len(u.members) for n, units in forced.items() for u in units
                if STRUCTURE_OF_KIND[counts.sites[n].kind] == kind
            )
            if wanted is None:
                budgets[kind] = float("inf")
            elif wanted < forced_kind:
                raise RecipeError(f"target.{kind}={wanted} is below the {forced_kind} that the minimums keep")
            else:
                budgets[kind] = wanted - forced_kind
        return budgets
    total = counts.total(metric)
    fixed = total - sum(u.cost for units in candidates.values() for u in units) - gone_cost
    budget = recipe.target.get(metric) * total
    if budget < fixed - 1e-6 * total:
        channels = any(STRUCTURE_OF_KIND[counts.sites[n].kind] == "channels" for n in forced)
        raise RecipeError(
            f"target.{metric}={recipe.target.get(metric)} cannot be met: what is not pruned"
            f"{' and the minimums' if forced_cost else ''} already takes {fixed / total:.1%} of the {metric}"
            + (f" (every conv layer keeps at least min_channels={recipe.min_channels} channels)" if channels else "")
            + (" (measured: embeddings, norms and the rest no pruning removes)" if metric == "latency" else "")
        )
    shared = budget - fixed
    totals = {k: sum(u.cost for u in v) for k, v in candidates.items()}
    spread = sum(totals.values()) or 1.0
    # Criteria without a common scale: each kind keeps the share of the budget it has among the candidates.
    return {"shared": shared, **{k: shared * totals[k] / spread for k in candidates}}


def _round(plan: Plan, kind: str, scores: dict, step: int, minimum: int, counts: ModelCount, recipe: Recipe,
           metric: str) -> None:
    """Round each site's kept width of `kind` (neurons, channels) to a multiple of `step`, never below `minimum`,
    then give back blocks of `step` while over budget."""
    table = plan.tables()[kind]
    for name, kept in table.items():
        order = [i for i in scores[name].argsort(descending=True).tolist() if float(scores[name][i]) != GONE]
        width = min(len(order), max(round(len(kept) / step) * step, -(-minimum // step) * step))
        table[name] = sorted(order[:width])
    if metric in ("heads", "neurons"):
        limit = recipe.target.get(kind)
        spend = lambda: sum(len(k) for k in table.values())  # noqa: E731
    else:
        limit = recipe.target.get(metric) * counts.total(metric)
        spend = lambda: planned_cost(plan, counts, metric)  # noqa: E731
    while limit is not None and spend() > limit + 1e-9:
        # Drop the block of `step` least important kept units from the site where that block matters least.
        options = []
        for name, kept in table.items():
            if len(kept) - step >= max(minimum, 1 if kind == "channels" else 0) and len(kept) >= step:
                ranked = sorted(kept, key=lambda i: float(scores[name][i]))
                options.append((float(scores[name][ranked[:step]].sum()), name, ranked[:step]))
        if not options:
            raise RecipeError(f"target {recipe.target.to_dict()} cannot be met with {kind} widths rounded to {step}")
        _, name, block = min(options)
        table[name] = sorted(set(table[name]) - set(block))


def planned_cost(plan: Plan, counts: ModelCount, metric: str) -> float:
    """FLOPs, params or modelled latency of the model once `plan` is applied (from the per-unit costs; exact for
    FLOPs and params)."""
    total = counts.total(metric)
    for name, site in counts.sites.items():
        per_unit, per_kv = unit_cost(site, metric)
        if name in plan.neurons:
            total -= (site.units - len(plan.neurons[name])) * per_unit
        if name in plan.channels:
            total -= (site.units - len(plan.channels[name])) * per_unit
        if name in plan.heads:
            kept = plan.heads[name]
            group = site.units // site.kv_units
            kept_kv = len({h // group for h in kept})
            total -= (site.units - len(kept)) * per_unit + (site.kv_units - kept_kv) * per_kv
    return total
