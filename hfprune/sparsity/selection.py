"""Which weights a score matrix prunes: exact counts (round half up), ties to the earlier position, per row,
per matrix, per N:M group, or one threshold over all layers."""

from __future__ import annotations

import math

import torch

from ..settings import WeightSettings


def count(sparsity: float, size: int) -> int:
    """How many of `size` weights a sparsity prunes: round half up, so 0.5 of 37 is 19 everywhere."""
    return int(math.floor(sparsity * size + 0.5))


def lowest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` lowest entries of each row of a 2D tensor; ties go to the earlier position, so the
    count is exact and the choice deterministic."""
    rows, width = values.shape
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = values.kthvalue(k, dim=1, keepdim=True).values
    below = values < threshold
    ties = values == threshold
    room = k - below.sum(1, keepdim=True)
    return below | (ties & (ties.cumsum(1) <= room))


def select(scores: torch.Tensor, settings: WeightSettings, per_row: bool, sparsity: float | None = None):
    """Which weights of an `(out, in)` score matrix to prune (True = prune), lowest scores first: N lowest of
    each group of M inputs for N:M; else the lowest fraction of each row (`per_row`) or of the whole matrix."""
    sparsity = settings.sparsity if sparsity is None else sparsity
    rows, width = scores.shape
    if settings.n_m is not None:
        n, m = settings.n_m
        return lowest(scores.reshape(-1, m), n).reshape(rows, width)
    if per_row:
        return lowest(scores, count(sparsity, width))
    return lowest(scores.reshape(1, -1), count(sparsity, scores.numel())).reshape(rows, width)


def select_global(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold over every layer's scores: the lowest `sparsity` of all weights together (exact count)."""
    flat = torch.cat([s.flatten().float() for s in scores])
    pruned = lowest(flat[None], count(sparsity, flat.numel()))[0]
    return [p.reshape(s.shape) for p, s in zip(pruned.split([s.numel() for s in scores]), scores, strict=True)]
