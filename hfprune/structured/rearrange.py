"""Mask rearrangement (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers", section 4.2):
within each site, keep as many units as the search chose, but pick *which* ones to minimise the second-order loss
estimate sum_b (sum_{i removed} g_bi)^2 over per-example gate gradients, so units whose gradients cancel can go
together. Greedy best-swap search.
"""

from __future__ import annotations

import copy

import torch

from .criteria import Scores
from .search import GONE

MAX_SWAPS = 50


def _best_removed_set(grads: torch.Tensor, kept: list[int], gone: torch.Tensor) -> list[int]:
    """`kept` after greedy swaps; units marked in `gone` (removed by an earlier round) are never swapped in."""
    units = grads.shape[1]
    keep_mask = torch.zeros(units, dtype=torch.bool)
    keep_mask[kept] = True
    for _ in range(MAX_SWAPS):
        removed, kept_now = (~keep_mask & ~gone).nonzero().flatten(), keep_mask.nonzero().flatten()
        if not len(removed) or not len(kept_now):
            break
        g_removed, g_kept = grads[:, removed], grads[:, kept_now]
        s = g_removed.sum(1)  # (batches,)
        objective = float(s.pow(2).sum())
        # Swapping removed unit i back in for kept unit j changes the objective by a_i + c_j - 2 g_i . g_j.
        a = g_removed.pow(2).sum(0) - 2 * (s @ g_removed)
        c = g_kept.pow(2).sum(0) + 2 * (s @ g_kept)
        delta = a[:, None] + c[None, :] - 2 * (g_removed.t() @ g_kept)
        best = int(delta.argmin())
        i, j = divmod(best, delta.shape[1])
        if float(delta.flatten()[best]) >= -1e-9 * max(objective, 1e-30):
            break
        keep_mask[removed[i]], keep_mask[kept_now[j]] = True, False
    return sorted(keep_mask.nonzero().flatten().tolist())


def rearrange(plan, scores: Scores, counts):
    """A copy of `plan` with each site's kept set (same size) rearranged using the per-example gradients of a
    gradient criterion (`plan` itself is left as it is, so a caller can keep it). GQA sites, whose units are tied
    across groups, keep the search's choice."""
    plan = copy.deepcopy(plan)
    tables = ((plan.heads, scores.head_grads, scores.heads), (plan.neurons, scores.neuron_grads, scores.neurons),
              (plan.channels, scores.channel_grads, scores.channels))
    for table, grads, values in tables:
        for name, kept in table.items():
            grad = grads.get(name)
            if grad is None or not 0 < len(kept) < grad.shape[1] or grad.shape[0] < 2:
                continue
            site = counts.sites[name]
            if table is plan.heads and site.units != site.kv_units:
                continue  # GQA: heads go in tied units; a single swap would break the group rule
            table[name] = _best_removed_set(grad.double(), kept, values[name].cpu() == GONE)
    return plan
